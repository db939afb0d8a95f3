"""Training: the one epoch loop for one model or many (`loop`: a plan's members through their epochs), the members
trained together (`cohort`), the forms of the model axis (`axis`), and what is kept of each epoch (`records`)."""
