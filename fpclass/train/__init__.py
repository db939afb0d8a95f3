"""Training: the one epoch driver for one model or many (`engine`), the forms of the model axis (`axis`),
the members and chunks of a sweep (`members`, `memory_plan`), and what is kept of each epoch (`records`)."""
