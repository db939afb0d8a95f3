"""What the "none of my classes" score costs per image, against predict's own program (issue 79's goal: < 10%).

    python -m bench.ood_cost --workdir /tmp/bench-deploy/footprint/solo [--images 512] [--rounds 7] [--batch 64]

On one workdir (a run or an ensemble), for each score: the seconds per image of the program predict runs with the
score (`fpclass.deploy.ood.Scorer`: logits and score in one jitted program) against the same model's logits alone
(predict with --config.ood.enabled=False), on the same random uint8 images at the model's input size, in
interleaved rounds after a warm-up (the median of each). Printed and written to --out as JSON.
"""
import argparse
import json
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fpclass import fileio  # noqa: E402
from fpclass.config.outputs import OodSettings  # noqa: E402
from fpclass.deploy import ood  # noqa: E402
from fpclass.infer.ensemble import load_model  # noqa: E402
from fpclass.train import sidecar  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', type=pathlib.Path, required=True)
  p.add_argument('--images', type=int, default=512)
  p.add_argument('--rounds', type=int, default=7)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--scores', nargs='+', default=['combined', 'mahalanobis_energy', 'energy'])
  p.add_argument('--out', type=pathlib.Path, default=pathlib.Path('runs/bench-ood-cost.json'))
  args = p.parse_args()
  model = load_model(sidecar.stored_config(args.workdir), args.workdir)
  height, width = model.metadata['image_size']
  images = np.random.default_rng(0).integers(0, 256, (args.images, height, width, model.metadata['channels']),
                                             dtype=np.uint8)
  plain = lambda: model.logits(images, batch_size=args.batch)   # noqa: E731
  scorers = {s: ood.Scorer(model, ood.for_model(model, args.workdir, OodSettings(score=s), store=False))
             for s in args.scores}
  runs = {'logits alone': plain, **{s: (lambda sc=sc: sc.scores(images, args.batch)) for s, sc in scorers.items()}}
  seconds = {name: [] for name in runs}
  for run in runs.values():   # warm-up: every program compiled
    run()
  for _ in range(args.rounds):
    for name, run in runs.items():
      start = time.perf_counter()
      run()
      seconds[name].append(time.perf_counter() - start)
  base = float(np.median(seconds['logits alone']))
  result = dict(argv=sys.argv, workdir=str(args.workdir), images=args.images, batch=args.batch,
                median_seconds={k: float(np.median(v)) for k, v in seconds.items()},
                ratio_to_logits={k: float(np.median(v)) / base for k, v in seconds.items()})
  fileio.write_json(args.out, result)
  print(json.dumps(result['ratio_to_logits'], indent=1))


if __name__ == '__main__':
  main()
