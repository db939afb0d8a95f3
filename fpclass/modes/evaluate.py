"""`--mode evaluate`: the selected checkpoint of a trained workdir scored on its validation split (and a labelled
test split, if any), by `fpclass.infer.evaluation`: scores.json, classification_report.txt, val_predictions.csv,
the plots and the evaluation section of report.md.
"""
from fpclass.infer.evaluation import evaluate_workdir

__all__ = ['evaluate_workdir']
