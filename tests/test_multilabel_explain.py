"""--mode explain of a multi-label model: the figures and tables it writes, the top losses ranked by the binary
cross-entropy summed over the labels (recomputed here from the restored model), the per-label error counts at
the stored thresholds, and each label's Grad-CAM as the gradient of that label's logit."""
import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from flax import traverse_util

from fpclass.config.inputs import DataSettings
from fpclass.config.outputs import ExplainSettings
from fpclass.data import pipeline
from fpclass.explain import cam, explanation_multilabel
from fpclass.explain.explainer import build_explainer
from fpclass.infer.inference import load_trained
from fpclass.infer.predictions import prediction_chunk
from fpclass.models import PERTURBATION_PREFIX
from fpclass.modes import explain
from fpclass.train import checkpoint, sidecar
from tests import content
from tests.conftest import MULTILABEL, launch, load_config

NAMES = ['circle', 'cross', 'ring', 'square', 'triangle']
# Stored as --mode calibrate stores them, so the test sees explain decide at them and not at 0.5.
THRESHOLDS = {'circle': 0.55, 'cross': 0.55, 'ring': 0.5, 'square': 0.52, 'triangle': 0.55}


@pytest.fixture(scope='module')
def restored(trained_multilabel, tmp_path_factory):
  """The fixture's run with stored thresholds, explained through launch.py, and its model and validation split
  restored in process: (workdir, config, trained, val, probabilities as explain computes them)."""
  shared, env, _ = trained_multilabel
  workdir = tmp_path_factory.mktemp('ml-explain') / 'run'
  shutil.copytree(shared, workdir)
  metadata = json.loads((workdir / sidecar.METADATA).read_text())
  metadata['calibration'] = {'thresholds': THRESHOLDS}
  (workdir / sidecar.METADATA).write_text(json.dumps(metadata))
  launch(MULTILABEL, f'--workdir={workdir}', '--mode=explain', env=env)
  config = load_config(MULTILABEL.split('=', 1)[1])
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
    dataset = pipeline.load_dataset(DataSettings.from_config(config.data))
  trained = load_trained(config, workdir)
  probs = trained.probabilities(dataset.val.images, int(config.eval.batch_size), prediction_chunk(trained.settings, dataset))
  return workdir, config, trained, dataset, probs


def summed_bce(probs, labels):
  p, y = np.clip(np.asarray(probs, np.float64), 1e-12, 1 - 1e-12), np.asarray(labels, np.float64)
  return -np.sum(y * np.log(p) + (1 - y) * np.log1p(-p), axis=1)


def test_explain_writes_label_figures_and_ranks_by_summed_bce(restored):
  workdir, config, trained, dataset, probs = restored
  val, out = dataset.val, workdir / 'explain'
  assert trained.task.head == 'multilabel' and not config.explain.after_training  # the config's default
  for name in ('gradcam_worst.png', 'inference_grid.png', 'feature_maps.png', 'top_losses.csv', 'label_errors.csv'):
    assert (out / name).is_file(), name
  assert not (out / 'most_confused.csv').exists()
  per_label = sorted(p.name for p in out.glob('gradcam_*_false_*.png'))
  assert per_label and all(re.fullmatch(rf'gradcam_({"|".join(NAMES)})_false_(positives|negatives)\.png', n)
                           for n in per_label), per_label
  content.check_plots(out, [p.name for p in out.glob('*.png')])

  # Highest summed binary cross-entropy first, recomputed from the restored model's sigmoids and the labels.
  top = pd.read_csv(out / 'top_losses.csv', dtype={'id': str, 'label': str, 'predicted': str}, keep_default_na=False)
  loss = summed_bce(probs, val.labels)
  order = np.argsort(-loss, kind='stable')
  assert top['id'].tolist() == [val.ids[i] for i in order] and top['index'].tolist() == order.tolist()
  np.testing.assert_allclose(top['loss'], loss[order], rtol=1e-6)
  assert np.ptp(loss) > 0.1  # a real ranking, not ties
  # Tags at the stored thresholds, true and predicted, and how many labels each image gets wrong.
  predicted = probs >= np.array([THRESHOLDS[n] for n in NAMES])
  tags = lambda rows: [' '.join(n for n, on in zip(NAMES, row) if on) for row in rows]
  assert top['label'].tolist() == tags(np.asarray(val.labels)[order])
  assert top['predicted'].tolist() == tags(predicted[order])
  assert top['wrong_labels'].tolist() == (predicted != val.labels.astype(bool)).sum(1)[order].tolist()
  assert predicted.any(1).any() and not predicted.any(1).all()  # some images fall back to their most probable label

  errors = pd.read_csv(out / 'label_errors.csv').set_index('label')
  truth = val.labels.astype(bool)
  assert errors.loc[NAMES, 'false_positives'].tolist() == (predicted & ~truth).sum(0).tolist()
  assert errors.loc[NAMES, 'false_negatives'].tolist() == (~predicted & truth).sum(0).tolist()
  assert errors.loc[NAMES, 'threshold'].tolist() == [THRESHOLDS[n] for n in NAMES]

  # report.md: the top-losses table lists the first num_images in that order, and every link resolves.
  report = (workdir / 'report.md').read_text()
  section = report.split('## Explanations')[1].split('\n## ')[0]
  table = section.split('### Top losses')[1].split('###')[0]
  shown = re.findall(r'^\| (\d+) \| (\S+) \| ', table, flags=re.M)
  assert [int(i) for i, _ in shown] == order[:config.explain.num_images].tolist()
  assert 'for each predicted label' in section and 'Most confused' not in section
  links = re.findall(r'\]\((explain/[^)]+)\)', section)
  assert {f'explain/{p.name}' for p in out.iterdir()} <= set(links)
  assert all((workdir / link).is_file() for link in links)


def test_after_training_path_writes_the_same_ranking(restored, tmp_path):
  """The runner calls explain after training with its dataset, model and validation probabilities: the same
  files as --mode explain."""
  workdir, config, trained, dataset, probs = restored
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / 'explain')
  written = explain.explain_workdir(config, copy, dataset=dataset, trained=trained, val_probabilities=probs)
  assert {'worst', 'top_losses', 'label_errors', 'inference_grid', 'feature_maps'} <= set(written)
  for name in ('top_losses.csv', 'label_errors.csv'):
    got, expected = (pd.read_csv(folder / 'explain' / name, keep_default_na=False) for folder in (copy, workdir))
    pd.testing.assert_frame_equal(got, expected, rtol=1e-6)


def test_label_groups_and_fallback_labels():
  """Per label, false positives by highest and false negatives by lowest probability; an image with no chosen
  label is explained by its most probable one."""
  probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.3, 0.4], [0.8, 0.1]])
  truth = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.uint8)
  predicted = (probs >= 0.5).astype(np.uint8)
  groups = explanation_multilabel.select_label_groups(probs, truth, predicted, ('a', 'b c'), n=1)
  assert {key: (k, shown.tolist(), total) for key, (k, shown, total) in groups.items()} == {
      'a_false_positives': (0, [0], 2), 'a_false_negatives': (0, [2], 1),
      'b-c_false_positives': (1, [], 0), 'b-c_false_negatives': (1, [0], 1)}
  explained = explanation_multilabel.explained_labels(probs, predicted)
  assert [(labels.tolist(), fallback) for labels, fallback in explained] == [
      ([0], False), ([0, 1], False), ([1], True), ([0], False)]


def hand_gradcam(trained, variables, x, k: int, layer: str):
  """Grad-CAM from first principles: jax.grad of logit k at the layer's perturbation, weights averaged over
  space, times the activations, then cam.normalise."""
  apply_fn = trained.task.model.apply
  entries = traverse_util.flatten_dict(apply_fn(variables, x, mutable='perturbations')[1]['perturbations'])
  (key,) = [key for key in entries if key[-1] == PERTURBATION_PREFIX + layer]
  zeros = {name: jnp.zeros_like(value) for name, value in entries.items()}

  def logit(perturbation):
    perturbations = traverse_util.unflatten_dict({**zeros, key: perturbation})
    return apply_fn({**variables, 'perturbations': perturbations}, x)[0][0, k]

  gradient = jax.grad(logit)(zeros[key])
  activations = apply_fn(variables, x)[1][layer]
  raw = jnp.einsum('nhwc,nc->nhw', activations, jnp.mean(gradient, axis=(1, 2)))
  return np.asarray(cam.normalise(raw, x.shape[1:3]))[0]


def test_each_label_map_is_the_gradient_of_its_logit(restored):
  _, config, trained, dataset, _ = restored
  settings = ExplainSettings.from_config(config.explain)
  explainer = build_explainer(trained, settings, (*trained.metadata['image_size'], trained.metadata['channels']))
  images, labels = dataset.val.images, range(len(NAMES))
  # Every label of 8 images in one batched call; a repeated pair is explained once.
  maps = explainer.pair_maps(images, [(j, k) for j in range(8) for k in labels] + [(0, 0)])
  assert sorted(maps) == [(j, k) for j in range(8) for k in labels]
  variables = checkpoint.model_variables(trained.state)
  # Different labels of one image get different maps. (Not every image: in this barely trained net an image
  # whose fc layer has one active unit gets proportional gradients, so equal maps, for every label.)
  spread = [max(np.abs(maps[(j, a)][0] - maps[(j, b)][0]).max() for a in labels for b in range(a)) for j in range(8)]
  i = int(np.argmax(spread))
  assert spread[i] > 0.2, spread
  x = trained.task.prepare(images[i:i + 1])
  for k in labels:
    # The single-label routine with class index k on the same logits, and Grad-CAM by hand from jax.grad.
    single = np.asarray(cam.cam(trained.task.model.apply, variables, x, [k], explainer.layer, settings.method))[0]
    np.testing.assert_allclose(maps[(i, k)][0], single, atol=1e-5)
    np.testing.assert_allclose(maps[(i, k)][0], hand_gradcam(trained, variables, x, k, explainer.layer), atol=1e-4)
