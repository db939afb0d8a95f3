"""The config a workdir was written from: a trained run's sidecar (metadata.json), or a sweep's or an auto
run's workdir.json.

    python launch.py --workdir runs/fp --mode submit                      # launch.py uses this file for you
    python launch.py --workdir runs/sweep --mode ensemble                 # the sweep's config
    python launch.py --config configs/workdir.py:runs/fp --workdir runs/fp --mode predict \
        --config.predict.inputs=new_images/

launch.py passes `--config configs/workdir.py:<workdir>` itself when a mode that reads a trained workdir
(evaluate, explain, submit, calibrate, predict, serve, export, ensemble, label_issues) is run without
--config. Overrides apply on top; one that would change a restored model or its input is refused, naming the
value stored at training.
"""
from fpclass.train.sidecar import stored_config


def get_config(arg: str = ''):
  if not arg:
    raise ValueError('configs/workdir.py needs the workdir: --config configs/workdir.py:<workdir>')
  return stored_config(arg)
