"""Budgeted search over plans (Optuna), screening by linear probes, and ensemble selection."""
