"""One-image CPU latency of the exported model: onnxruntime and the deserialized jax.export artifact,
next to fpclass's own jitted predict, on the same images in the same run.

    python bench/export_latency.py                               # the footprint CNN (exp4), random weights
    python bench/export_latency.py --workdir runs/fp-exp4        # a trained workdir's selected checkpoint
    python bench/export_latency.py --config configs/footprint.py:resnet18 --repeats 100 --json out.json

Each call classifies one uint8 image (1, H, W, C) and reads the logits back to the host. The three are
called in turn within each round, so machine load hits them alike; the first calls (compilation, session
set-up) are not timed. Reported: median and 95th percentile milliseconds per call.
"""
import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from fpclass.deploy import export as export_mode  # noqa: E402
from fpclass.train import checkpoint  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--config', default='configs/footprint.py:exp4', help='the model, when no --workdir is given')
  p.add_argument('--workdir', type=pathlib.Path, help='a trained workdir (its sidecar gives the config)')
  p.add_argument('--repeats', type=int, default=200, help='timed calls of each runtime')
  p.add_argument('--json', type=pathlib.Path, help='also write the results here')
  args = p.parse_args()
  command = 'python ' + ' '.join([pathlib.Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
  print('command: ' + command, flush=True)

  task, variables, image_shape, name = load_model(args)
  import onnxruntime
  with tempfile.TemporaryDirectory() as folder:
    written = export_mode.export_model(task, variables, image_shape, folder, batch_size=1,
                                       description={'model': name})
    session = onnxruntime.InferenceSession(str(written['onnx']), providers=['CPUExecutionProvider'])
    exported = jax.export.deserialize(bytearray(written['stablehlo'].read_bytes()))
  exported_call = jax.jit(exported.call)  # as a user would call it repeatedly: traced once

  predict = jax.jit(task.predict)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  images = np.random.default_rng(0).integers(0, 256, (args.repeats, 1, *image_shape), dtype=np.uint8)
  runtimes = {
      'fpclass (jax.jit predict)': lambda x: np.asarray(predict(params, batch_stats, x)),
      'onnxruntime (model.onnx)': lambda x: session.run(['logits'], {'images': x})[0],
      'jax.export (deserialized, jitted call)': lambda x: np.asarray(exported_call(x)),
  }
  outputs = {k: run(images[0]) for k, run in runtimes.items()}  # first calls: compile, set up; not timed
  reference = outputs['fpclass (jax.jit predict)']
  times = {k: [] for k in runtimes}
  for x in images:
    for k, run in runtimes.items():
      start = time.perf_counter()
      run(x)
      times[k].append(time.perf_counter() - start)

  rows = [{'runtime': k, 'median_ms': round(1e3 * statistics.median(t), 3),
           'p95_ms': round(1e3 * float(np.percentile(t, 95)), 3),
           'max_abs_difference_from_fpclass': float(np.max(np.abs(outputs[k] - reference)))} for k, t in times.items()]
  report = {'date': datetime.date.today().isoformat(), 'command': command, 'model': name,
            'input': [1, *image_shape], 'repeats': args.repeats, 'cpu_count': len(os.sched_getaffinity(0)),
            'load_average': os.getloadavg()[0], 'onnxruntime': onnxruntime.__version__, 'jax': jax.__version__,
            'results': rows}
  print(f'\n{name}, one {image_shape[0]}x{image_shape[1]}x{image_shape[2]} uint8 image per call, '
        f'{args.repeats} calls each (load average {report["load_average"]:.1f} on {report["cpu_count"]} CPUs)')
  print('| runtime | median ms | p95 ms | max abs difference from fpclass |\n|---|---|---|---|')
  for r in rows:
    print(f'| {r["runtime"]} | {r["median_ms"]} | {r["p95_ms"]} | {r["max_abs_difference_from_fpclass"]:.2g} |')
  if args.json:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + '\n')


def load_model(args):
  """(task, variables, image shape, model name): a trained workdir's checkpoint, or random weights."""
  if args.workdir:
    from configs.workdir import get_config
    from fpclass.infer.inference import load_trained
    config = get_config(str(args.workdir))
    trained = load_trained(config, args.workdir)
    height, width = trained.metadata['image_size']
    return (trained.task, checkpoint.model_variables(trained.state), (height, width, trained.metadata['channels']),
            f'{config.model.name} ({args.workdir})')
  import importlib.util

  from fpclass.config.run import RunSettings
  from fpclass.train.task import build_task
  path, _, arg = args.config.partition(':')
  spec = importlib.util.spec_from_file_location('config_module', REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  if 'pretrained' in config.model:
    config.model.pretrained = ''  # random weights: latency does not depend on them, and nothing downloads
  height, width = config.data.image_size
  shape = (height, width, config.data.channels)
  task = build_task(RunSettings.from_config(config), ('0', '1'), np.arange(2), steps_per_epoch=1)
  state = jax.jit(lambda key: task.init(key, shape))(jax.random.PRNGKey(0))
  return task, checkpoint.model_variables(state), shape, f'{config.model.name} (random weights)'


if __name__ == '__main__':
  main()
