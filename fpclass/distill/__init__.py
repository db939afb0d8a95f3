"""Distillation: a trained workdir as the teacher inside the student's step, and the student compared with
its teacher and with itself trained alone."""
