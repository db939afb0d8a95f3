"""The seed recipes end to end through launch.py with `quick`, on stand-in data of the seeds' layouts and
image sizes: TFDS datasets prepared as real ArrayRecord files (tests/tfds_stand_in.py), generated
ImageFolders for the others. Each test checks what the recipe writes, not only that it ran."""
import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.clean_planted import plant_folder
from fpclass import models
from tests import content
from tests.conftest import launch, load_config
from tests.tfds_stand_in import CIFAR10_NAMES, cifar_like_image, prepare_stand_in, two_class_image


def read_scalars(folder) -> dict:
  """{(tag, step): value} from TensorBoard event files (TFRecord framing: length, crc, event, crc)."""
  from tensorboardX.proto import event_pb2
  out = {}
  for path in sorted(folder.glob('events.out.tfevents.*')):
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        out[(value.tag, event.step)] = value.simple_value
  return out


def check_common_outputs(workdir, n_val, class_names):
  scores = content.check_scores_match_predictions(workdir)
  assert scores['n'] == n_val and scores['class_names'] == list(class_names)
  history = pd.read_csv(workdir / 'metrics.csv')
  assert history['epoch'].tolist() == [1, 2] and np.isfinite(history['train_loss']).all()
  # TensorBoard holds the same numbers as metrics.csv (seed 004's callback), written without TensorFlow.
  scalars = read_scalars(workdir / 'tensorboard')
  for row in history.itertuples():
    assert np.isclose(scalars[('loss/train', row.epoch)], row.train_loss, rtol=1e-5)
    assert np.isclose(scalars[('accuracy/val', row.epoch)], row.val_accuracy, rtol=1e-5)
  content.check_plots(workdir)
  assert '](scores.json)' in (workdir / 'report.md').read_text()
  return scores, history


def test_cifar_vehicles_quick(tmp_path):
  # Two train images per CIFAR class (the 90/10 split keeps one of each coarse class for val) and one test
  # image per class: every split still holds both coarse classes and the test table every source class.
  tfds_dir = tmp_path / 'tfds'
  prepare_stand_in('cifar10', tfds_dir, {'train': 20, 'test': 10}, cifar_like_image, CIFAR10_NAMES)
  workdir = tmp_path / 'run'
  launch('--config=configs/cifar_vehicles.py:quick', f'--workdir={workdir}', f'--config.data.tfds.data_dir={tfds_dir}')
  scores, _ = check_common_outputs(workdir, 2, ('vehicle', 'animal'))
  # Train, val and test, each with accuracy and precision (seed 001's report).
  assert [scores[s]['n'] for s in ('train', 'test')] == [18, 10]
  for split in (scores, scores['train'], scores['test']):
    assert sum(split['per_class'][c]['support'] for c in ('vehicle', 'animal')) == split['n']
    assert split['accuracy'] == pytest.approx(np.trace(split['confusion_matrix']) / split['n'])
  # The confusion table by original CIFAR class, for every split.
  table = content.check_fine_label_table(workdir)
  assert list(table.columns) == ['split', 'fine_label', 'label', 'n', 'predicted_vehicle', 'predicted_animal',
                                 'errors', 'error_rate']
  test = table[table['split'] == 'test']
  assert test['fine_label'].tolist() == ['airplane', 'automobile', 'ship', 'truck', 'bird', 'cat', 'deer', 'dog',
                                         'frog', 'horse']
  assert test['label'].tolist() == ['vehicle'] * 4 + ['animal'] * 6 and (test['n'] == 1).all()
  assert (test['predicted_vehicle'] + test['predicted_animal'] == test['n']).all()
  expected_errors = np.where(test['label'] == 'vehicle', test['predicted_animal'], test['predicted_vehicle'])
  assert (test['errors'] == expected_errors).all()
  assert test['errors'].sum() == round((1 - scores['test']['accuracy']) * 10)
  assert table.groupby('split')['n'].sum().to_dict() == {'train': 18, 'val': 2, 'test': 10}
  report = (workdir / 'report.md').read_text()
  assert '## Errors by source class' in report and '| split | n | accuracy | macro_f1 | precision_vehicle |' in report


def test_horses_humans_quick(tmp_path):
  tfds_dir = tmp_path / 'tfds'
  # Few images, at the seed's 300x300 (decoded to the recipe's 150): the model and its size are the claim.
  prepare_stand_in('horses_or_humans', tfds_dir, {'train': 8, 'test': 4}, two_class_image((300, 300)))
  workdir = tmp_path / 'run'
  launch('--config=configs/horses_humans.py:quick', f'--workdir={workdir}', f'--config.data.tfds.data_dir={tfds_dir}')
  scores, _ = check_common_outputs(workdir, 4, ('horses', 'humans'))
  assert scores['checkpoint'] == 'last' and scores['num_params'] == 9_494_561
  meta = json.loads((workdir / 'metadata.json').read_text())
  assert meta['image_size'] == [150, 150] and meta['config']['train']['optimizer'] == 'rmsprop'
  report = (workdir / 'report.md').read_text()
  assert "the source's own validation folder" in report and '| train | 4 | 4 | 8 |' in report


def test_horses_humans_variants():
  small, large = load_config('configs/horses_humans.py'), load_config('configs/horses_humans.py:size300')
  assert small.data.image_size == (150, 150) and large.data.image_size == (300, 300)
  count = lambda c: param_count(c.model, (*c.data.image_size, 3))
  assert count(small) == 9_494_561 and count(large) == 40_165_409  # the seed: ~9.5M and ~38M
  plain, augmented = load_config('configs/horses_humans.py').augment, load_config('configs/horses_humans.py:augment').augment
  assert plain.hflip == plain.rotation == 0.0
  assert (augmented.hflip, augmented.vflip, augmented.rotation, augmented.zoom, augmented.height, augmented.width) == (
      0.5, 0.0, 72.0, 0.2, 0.2, 0.2)


def param_count(model_cfg, image_shape) -> int:
  model = models.create_model(model_cfg, 2)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)), train=False))
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables['params']))


def pet_images(root, rng, per_class: int = 20):
  """A PetImages-like folder: `per_class` Cat/ and Dog/ JPEGs of assorted sizes, plus what the real one has
  too: an empty JPEG, a truncated one and a Thumbs.db."""
  for cls, base in (('Cat', 80), ('Dog', 170)):
    (root / cls).mkdir(parents=True)
    for i in range(per_class):
      w, h = int(rng.integers(120, 400)), int(rng.integers(120, 400))
      Image.fromarray(np.clip(base + rng.normal(0, 50, (h, w, 3)), 0, 255).astype(np.uint8)).save(
          root / cls / f'{i}.jpg', quality=85)
  (root / 'Cat' / '666.jpg').write_bytes(b'')
  (root / 'Dog' / '11702.jpg').write_bytes((root / 'Dog' / '0.jpg').read_bytes()[:700])
  (root / 'Dog' / 'Thumbs.db').write_bytes(b'\0' * 64)


def test_cats_dogs_quick(tmp_path):
  root = tmp_path / 'PetImages'
  pet_images(root, np.random.default_rng(0))
  workdir = tmp_path / 'run'
  # The files keep their assorted sizes; decoding shrinks them further than quick's 64x64 (the claim is the
  # ingest and the run's outputs, not the size).
  launch('--config=configs/cats_dogs.py:quick', f'--workdir={workdir}', f'--config.data.root={root}',
         '--config.data.image_size=(32,32)')
  scores, _ = check_common_outputs(workdir, 8, ('Cat', 'Dog'))  # 80/20 of the 40 good images
  assert scores['roc_auc'] is not None  # its value: check_scores_match_predictions
  quarantine = pd.read_csv(workdir / 'quarantine.csv')
  reasons = dict(zip(quarantine['file'].map(lambda f: f.split('PetImages/')[1]), quarantine['reason']))
  assert reasons.keys() == {'Cat/666.jpg', 'Dog/11702.jpg', 'Dog/Thumbs.db'}
  assert reasons['Cat/666.jpg'] == 'zero-byte file' and 'truncated' in reasons['Dog/11702.jpg']
  assert (root / 'Cat' / '666.jpg').exists()  # listed, never deleted
  report = (workdir / 'report.md').read_text()
  assert '| train | 16 | 16 | 32 |' in report and '| val | 4 | 4 | 8 |' in report


def test_climbing_clean_then_train_quick(tmp_path):
  root = tmp_path / 'climbing'
  plant_folder(root, originals=36, copies_per_kind=1, seed=5)
  workdir = tmp_path / 'run'
  config = ['--config=configs/climbing.py:quick', f'--workdir={workdir}', f'--config.data.root={root}',
            '--config.data.image_size=(32,32)']  # quick's CNN at 32x32, not 64: the claim is clean, then train
  refused = launch(*config, '--apply', check=False)  # --apply belongs to clean only
  assert refused.returncode == 2 and '--apply is read only by --mode clean' in refused.stderr
  launch(*config, '--mode=clean')
  files = pd.read_csv(workdir / 'clean_files.csv', keep_default_na=False)
  assert (~files['keep']).sum() >= 4 + 5 - 1  # corrupt files and most copies
  launch(*config, f'--config.data.file_list={workdir / "clean_files.csv"}')
  kept = files[files['keep'] & files['split'].isin(['train', 'val'])]
  scores, _ = check_common_outputs(workdir, int((kept['split'] == 'val').sum()), ('heel_hook', 'others', 'toe_hook'))
  assert set(scores['per_class']) == {'heel_hook', 'others', 'toe_hook'} and 'test' in scores
  assert scores['test']['n'] == int((files['keep'] & (files['split'] == 'test')).sum())
  meta = json.loads((workdir / 'metadata.json').read_text())
  assert meta['config']['train']['class_weights'] == 'auto' and meta['config']['augment']['vflip'] == 0.5
  report = (workdir / 'report.md').read_text()
  train_counts = kept[kept['split'] == 'train']['label'].value_counts()
  assert (f'| train | {train_counts["heel_hook"]} | {train_counts["others"]} | {train_counts["toe_hook"]} | '
          f'{train_counts.sum()} |') in report
  assert report.index('## Data') < report.index('## Data cleaning') < report.index('## Validation results')
  assert 'file(s) left out by config.data.file_list' in report
