"""`--mode export`: the selected checkpoint as ONNX and as a serialized `jax.export` (StableHLO) artifact, with
the preprocessing inside the graph (`fpclass.infer.export`).

    python launch.py --workdir runs/fp-exp4 --mode export        # -> runs/fp-exp4/export/

Writes `model.onnx`, `model.jax_export` and `model.json` under `<workdir>/<config.export.folder>/`.
"""
import pathlib

from fpclass import __version__
from fpclass.config.outputs import ExportSettings
from fpclass.infer.export import export_model
from fpclass.infer.inference import load_trained
from fpclass.train import checkpoint


def export(config, workdir) -> dict:
  """Exports the selected checkpoint of `workdir`; returns the written paths by format."""
  workdir = pathlib.Path(workdir)
  settings = ExportSettings.from_config(config.export)
  trained = load_trained(config, workdir)
  height, width = trained.metadata['image_size']
  image_shape = (int(height), int(width), int(trained.metadata['channels']))
  calibration = trained.metadata.get('calibration') or {}
  description = {
      'model': str(config.model.name), 'name': str(config.name), 'class_names': list(trained.class_names),
      'checkpoint': trained.checkpoint, 'epoch': trained.epoch, 'fpclass_version': __version__,
      'resize': str(config.data.resize), 'normalisation': trained.metadata.get('normalisation'),
      'calibration': {'temperature': float(calibration.get('temperature') or 1.0),
                      'threshold': calibration.get('threshold')},
  }
  if trained.task.head == 'multilabel':  # by class name, as metadata.json stores them; 0.5 where none is stored
    description['calibration']['thresholds'] = calibration.get('thresholds')
  written = export_model(trained.task, checkpoint.model_variables(trained.state), image_shape,
                         workdir / settings.folder, settings.formats, settings.batch_size, description)
  for fmt, path in written.items():
    print(f'wrote {path} ({fmt})')
  return written
