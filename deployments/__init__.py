"""Deployments of the flows: schedules and triggers, served locally or deployed to a work pool."""
