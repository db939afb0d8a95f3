"""`--mode calibrate`: fit temperature and threshold on a workdir's validation predictions (or a sweep
variant's fold models' out-of-fold ones), store them in each model's sidecar, and report before/after."""
from fpclass.infer import calibrate_models


def calibrate(config, workdir) -> dict:
  return calibrate_models.calibrate(config, workdir)
