"""`--mode export`: the selected checkpoint as ONNX and as a serialized `jax.export` (StableHLO) artifact, with
the preprocessing inside the graph (`fpclass.deploy.export`).

    python launch.py --workdir runs/fp-exp4 --mode export              # -> runs/fp-exp4/export/
    python launch.py --workdir runs/fp-sweep/ensemble --mode export    # an ensemble: one graph, its weighted mix

Writes `model.onnx`, `model.jax_export` and `model.json` under `<workdir>/<config.export.folder>/`. An ensemble
workdir's graph holds every member model and outputs their weighted mean probabilities (`probabilities`, not
`logits`); model.json lists its members and weights. With config.ood.enabled (the default) each graph has a
second output, `ood_score`, and model.json's `ood` its threshold (`fpclass.deploy.ood`: fitted and stored in the
workdir on first use). With config.export.int8, also `model.int8.onnx` and `model.int8.json`: the statically
quantised model and its accuracy against the float model on held-out images, refused past
config.export.int8_max_drop (`fpclass.deploy.int8`).
"""
import json
import pathlib

from fpclass import __version__
from fpclass.config.outputs import ExportSettings, OodSettings
from fpclass.config.run import RunSettings
from fpclass.deploy import int8, ood
from fpclass.deploy.export import export_ensemble, export_model
from fpclass.infer.ensemble import WeightedEnsemble, load_model, member_config
from fpclass.train import checkpoint


def export(config, workdir) -> dict:
  """Exports the selected checkpoint of `workdir` (or its ensemble as one graph); returns the written paths."""
  workdir = pathlib.Path(workdir)
  settings = ExportSettings.from_config(config.export)
  trained = load_model(config, workdir)
  ensemble = isinstance(trained, WeightedEnsemble)
  height, width = trained.metadata['image_size']
  image_shape = (int(height), int(width), int(trained.metadata['channels']))
  calibration = trained.metadata.get('calibration') or {}
  description = {
      'model': 'ensemble' if ensemble else str(config.model.name), 'name': str(config.name),
      'class_names': list(trained.class_names),
      'checkpoint': trained.checkpoint, 'epoch': trained.epoch, 'fpclass_version': __version__,
      'resize': str(config.data.resize), 'normalisation': trained.metadata.get('normalisation'),
      'calibration': {'temperature': float(calibration.get('temperature') or 1.0),
                      'threshold': calibration.get('threshold')},
  }
  if trained.task.head == 'multilabel':  # by class name, as metadata.json stores them; 0.5 where none is stored
    description['calibration']['thresholds'] = calibration.get('thresholds')
    if ensemble and calibration.get('thresholds'):
      description['calibration']['thresholds_source'] = "--mode ensemble (on the mix's out-of-fold probabilities)"
  folder = workdir / settings.folder
  ood_settings = OodSettings.from_config(config.ood)
  scorer = (ood.Scorer(trained, ood.for_model(trained, workdir, ood_settings))
            if ood_settings.enabled else None)
  if ensemble:
    description['normalisation'] = 'each member\'s own, inside the graph (ensemble.models)'
    written = export_ensemble(trained, image_shape, folder, settings.formats, settings.batch_size, description,
                              scorer)
  else:
    written = export_model(trained.task, checkpoint.model_variables(trained.state), image_shape, folder,
                           settings.formats, settings.batch_size, description, scorer)
  for fmt, path in written.items():
    print(f'wrote {path} ({fmt})')
  if settings.int8:
    data = RunSettings.from_config(config if ensemble else member_config(config, trained.metadata)).data
    threshold = scorer.threshold if scorer is not None else None
    described = int8.export_workdir_int8(written['onnx'], data, json.loads(written['description'].read_text()),
                                         settings.int8_max_drop, settings.int8_calibration_images, threshold)
    written['int8'] = folder / int8.INT8_FILE
    print(f'wrote {written["int8"]} (int8): {int8.summary(described)}')
  return written
