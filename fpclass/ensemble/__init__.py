"""Combining trained runs: Caruana selection over out-of-fold predictions, greedy soups, and an ensemble
workdir's calibration. The ensemble model itself (`fpclass.infer.ensemble`) stays in the core, where serve and
distill load it."""
