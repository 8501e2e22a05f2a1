"""Integrations with training libraries (optional dependencies, imported on use)."""
