"""`--mode calibrate`: fit temperature and threshold on a workdir's validation predictions (or a sweep
variant's fold models' out-of-fold ones), store them in each model's sidecar, and report before/after. On an
ensemble workdir (`--mode ensemble`, an auto run's final ensemble): fit them on the ensemble's out-of-fold
probabilities and store them as the ensemble's own, which its readers apply to the mix."""
from fpclass.config.run import RunSettings
from fpclass.ensemble import calibration as ensemble_calibration
from fpclass.infer import calibrate_models, ensemble


def calibrate(config, workdir) -> dict:
  if ensemble.ensemble_record(workdir) is not None:
    return ensemble_calibration.calibrate_ensemble(config, RunSettings.from_config(config), workdir)
  return calibrate_models.calibrate(config, workdir)
