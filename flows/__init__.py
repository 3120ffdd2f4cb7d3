"""Prefect flows: the retrain chain (and, as they land, watch, predict, rollback)."""
