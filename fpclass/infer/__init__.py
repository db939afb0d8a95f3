"""Inference from a trained workdir: restore, predict in padded batches, evaluate, the ensemble model, decisions."""
