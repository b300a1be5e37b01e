"""Experiment configs: `default.py` holds every field; each experiment overrides it."""
