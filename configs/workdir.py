"""The training config of a trained workdir, read from its sidecar (metadata.json).

    python launch.py --workdir runs/fp --mode submit                      # launch.py uses this file for you
    python launch.py --config configs/workdir.py:runs/fp --workdir runs/fp --mode predict \
        --config.predict.inputs=new_images/

launch.py passes `--config configs/workdir.py:<workdir>` itself when a mode that reads a trained workdir
(evaluate, explain, submit, calibrate, predict, serve, export) is run without --config. Overrides apply on
top; one that would change the model or its input is refused, naming the value stored at training.
"""
from fpclass.train.sidecar import stored_config


def get_config(arg: str = ''):
  if not arg:
    raise ValueError('configs/workdir.py needs the workdir: --config configs/workdir.py:<workdir>')
  return stored_config(arg)
