"""Prefect flows and the ``eoforge`` command line: thin wiring, no pixel math."""
