"""Inference from a trained workdir: restore, predict in padded batches, ensembles, decisions."""
