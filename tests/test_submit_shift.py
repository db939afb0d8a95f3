"""Submit says whether the test images look like the training ones (fpclass/deploy/shift.py), through launch.py:
a Kaggle folder whose test images are drawn as its training images are gets no warning, and the same model asked
about a test folder of noise is told that its scores may not hold there."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import QUICK, launch

TINY = ['--config.data.image_size=(24,16)', '--config.model.conv_channels=(4,)', '--config.model.fc_sizes=(8,)',
        '--config.train.epochs=2', '--config.explain.after_training=False', '--config.train.tensorboard=False']


def blob(rng: np.random.Generator, label: int) -> np.ndarray:
  """A dark 24x16 frame with a bright blob in its top (0) or bottom (1) half, its place and brightness drawn."""
  image = rng.normal(30.0, 4.0, (24, 16))
  row = rng.integers(3, 9) + 12 * label
  col = rng.integers(3, 13)
  image[row - 2:row + 3, col - 2:col + 3] = rng.uniform(170, 230)
  return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  """A Kaggle folder: 120 labelled blobs, 60 test blobs in test/, and 60 noise frames in noise/."""
  root = tmp_path_factory.mktemp('shift') / 'kaggle'
  rng = np.random.default_rng(0)
  rows = []
  for folder, count in (('train', 120), ('test', 60)):
    (root / folder).mkdir(parents=True)
    for i in range(count):
      Image.fromarray(blob(rng, i % 2)).save(root / folder / f'{folder}_{i:03d}.png')
      rows += [f'{folder}_{i:03d}.png,{i % 2}'] if folder == 'train' else []
  (root / 'train.csv').write_text('filename,SEX\n' + '\n'.join(rows) + '\n')
  (root / 'noise').mkdir()
  for i in range(60):
    Image.fromarray(rng.integers(0, 256, (24, 16), dtype=np.uint8)).save(root / 'noise' / f'noise_{i:03d}.png')
  return root


def test_submit_warns_when_the_test_images_are_not_of_the_training_kind(tmp_path, root):
  workdir = tmp_path / 'run'
  common = [QUICK, f'--workdir={workdir}', f'--config.data.root={root}', '--config.data.val_fraction=0.25', *TINY]
  launch(*common)
  alike = launch(*common, '--mode=submit')
  section = (workdir / 'report.d' / '40-submission.md').read_text()
  # No warning: the line counts the flagged blobs (2 of 60 here; the exact count may move with the CPU's numerics).
  assert 'may not look like' not in alike.stdout + section and 'The test images: ' in section
  assert (workdir / 'ood.npz').is_file()   # fitted once, kept for predict, serve and export

  noise = launch(*common, '--mode=submit', '--config.data.test_dir=noise')
  assert len(pd.read_csv(workdir / 'submission.csv')) == 60
  assert 'The test images may not look like the training images: 60 of 60 (100.0%)' in noise.stdout
  section = (workdir / 'report.d' / '40-submission.md').read_text()
  assert '**The test images may not look like the training images:** 60 of 60' in section

  off = launch(*common, '--mode=submit', '--config.data.test_dir=noise', '--config.ood.enabled=False')
  assert 'may not look like' not in off.stdout + (workdir / 'report.d' / '40-submission.md').read_text()
