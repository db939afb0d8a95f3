"""Why the distilled footprint student's OOD score failed in bench/deploy.py: the student trained alone, distilled,
and distilled with the unlabelled test images (bench/deploy.py's student), each scored by Mahalanobis and kNN
against the other image sets, with the synthetic test images as the in-distribution side. A student that trained
on those test images (unlabelled) meets them again there, so each score is also fitted on the training images
plus one half of the test images, pseudo-labelled by the student; both fits are scored on the other half.

    python -m bench.deploy --out /tmp/bench-deploy --data footprint --stages train    # the teacher, once
    python -m bench.distill_ood --deploy-out /tmp/bench-deploy --out /tmp/distill-ood
"""
import argparse
import json
import pathlib

import numpy as np

from bench.deploy import data_sets, launch, other_sets, unseen_images
from fpclass import fileio
from fpclass.config.inputs import DataSettings, DecodeSettings
from fpclass.data import pipeline
from fpclass.deploy import ood, ood_threshold
from fpclass.deploy import ood_scores as ood_math
from fpclass.infer.inference import load_trained
from fpclass.train import sidecar


def arms(deploy_out: pathlib.Path) -> dict:
  flags, _, student = data_sets(12, deploy_out)['footprint']
  labelled_only = [s for s in student if 'distill.unlabelled' not in s]
  teacher = [f'--config.distill.teacher={deploy_out / "footprint" / "sweep" / "ensemble"}', '--mode=distill',
             '--config.distill.compare=False']
  return {'alone': [*flags, *labelled_only], 'distilled': [*flags, *labelled_only, *teacher],
          'distilled_with_test': [*flags, *student, *teacher]}


def aurocs(trained, statistics, inside_logits, inside_features, others: dict) -> dict:
  inside = ood_math.scores(statistics, inside_logits, inside_features)
  result = {}
  for name, images in others.items():
    logits, features = ood.outputs(trained, images, 256)
    result[name] = round(ood_threshold.auroc(inside, ood_math.scores(statistics, logits, features)), 3)
  return result


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--deploy-out', type=pathlib.Path, required=True, help="bench/deploy.py's --out (its teacher)")
  p.add_argument('--out', type=pathlib.Path, required=True)
  args = p.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  result = {}
  for arm, flags in arms(args.deploy_out).items():
    workdir = args.out / arm
    if not (workdir / 'scores.json').exists():
      launch([*flags, f'--workdir={workdir}'], args.out / f'{arm}.log')
    config = sidecar.stored_config(workdir)
    trained = load_trained(config, workdir)
    train = pipeline.load_dataset(DataSettings.from_config(config.data), progress=False).train
    test = unseen_images('footprint', config, args.deploy_out)
    others = other_sets('footprint', DecodeSettings.from_config(config.data), fileio.cache_root(''))
    _, train_features = ood.outputs(trained, train.images, 256)
    test_logits, test_features = ood.outputs(trained, test, 256)
    order = np.random.default_rng(0).permutation(len(test))
    fit_half, scored = order[:len(test) // 2], order[len(test) // 2:]
    for score in ('mahalanobis', 'knn'):
      plain = ood_math.fit_statistics(score, 'softmax', train_features, train.labels)
      refit = ood_math.fit_statistics(score, 'softmax', np.concatenate([train_features, test_features[fit_half]]),
                                      np.concatenate([train.labels, test_logits[fit_half].argmax(1)]))
      result[f'{arm} {score}'] = {
          'training images': aurocs(trained, plain, test_logits[scored], test_features[scored], others),
          'training + half the test images': aurocs(trained, refit, test_logits[scored], test_features[scored], others),
          'val_accuracy': json.loads((workdir / 'scores.json').read_text()).get('accuracy')}
      print(arm, score, json.dumps(result[f'{arm} {score}']), flush=True)
  (args.out / 'distill_ood.json').write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
