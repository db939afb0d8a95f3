"""`--mode auto`: the budgeted search over plans (space, rungs, budget, study, confirmation, final model) and its
report."""
