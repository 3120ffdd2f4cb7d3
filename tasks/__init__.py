"""Prefect tasks: thin wrappers over ``histo_core.steps`` that own retries and logging."""
