"""Explaining a trained model: Grad-CAM and its figures, the explainer over a restored run, the explanations
`--mode explain` writes, and the label-issue and suspect views."""
