"""Shared test helpers (models, runners, fingerprints), imported by the test modules."""
