"""Monitoring of served models: drift tests, service health and quality over time (no Dagster)."""
