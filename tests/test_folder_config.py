"""A folder of images and no config file (issue 77, item 9): `--config.data.root` alone picks configs/folder.py,
whose channels and input size the images decide (`fpclass.data.profile`), through launch.py for train and auto;
without a config and a root, the error says what to pass."""

import numpy as np
from PIL import Image

from fpclass.config.inputs import DataSettings
from fpclass.config.schema import base_config
from fpclass.data import profile
from fpclass.train import sidecar
from tests.conftest import launch

CLASSES = ('ant', 'bee', 'cow')


def image_folder(root, mode='RGB', sizes=((48, 36), (52, 40), (60, 44)), per_class=8):
  """One subfolder per class, images of `mode` in the given (width, height) sizes, each class a colour or shade
  of its own so that a small CNN can tell them apart."""
  rng = np.random.default_rng(0)
  for k, name in enumerate(CLASSES):
    (root / name).mkdir(parents=True)
    for i in range(per_class):
      width, height = sizes[i % len(sizes)]
      base = np.zeros((height, width, 3), np.uint8)
      base[..., k] = 200
      noisy = np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)
      Image.fromarray(noisy, 'RGB').convert(mode).save(root / name / f'{name}{i}.png')
  return root


def test_the_profile_reads_classes_modes_and_a_multiple_of_8_size(tmp_path):
  config = base_config()
  config.data.update(source='image_folder', root=str(image_folder(tmp_path / 'colour')))
  found = profile.profile(DataSettings.from_config(config.data))
  assert found.class_names == CLASSES and found.images == 24 and found.sampled == 24 and found.gray == 0
  assert found.median_size == (40, 52) and found.channels == 3 and found.image_size == (40, 48)
  config.data.root = str(image_folder(tmp_path / 'gray', mode='L', sizes=((200, 100),)))
  gray = profile.profile(DataSettings.from_config(config.data))
  assert gray.channels == 1 and gray.image_size == (32, 64)   # the longer side scaled to 64, the aspect kept
  assert profile.input_size(10, 12) == (16, 16)   # never below 16, and never enlarged past the images
  assert 'data: 3 classes (ant, bee, cow) and 24 training images' in gray.describe(tmp_path / 'gray')


def test_a_folder_alone_trains_through_launch(tmp_path):
  """--mode train on a folder with no config (auto on one: the next test but one)."""
  root = image_folder(tmp_path / 'mine')
  workdir = tmp_path / 'train'
  done = launch('--mode=train', f'--workdir={workdir}', f'--config.data.root={root}', '--config.train.epochs=2',
                '--config.explain.after_training=False', '--config.train.tensorboard=False')
  assert 'data: 3 classes (ant, bee, cow) and 24 training images' in done.stdout
  assert 'data.channels=3, data.image_size=(40, 48)' in done.stdout
  stored = sidecar.stored_config(workdir)
  assert stored.data.channels == 3 and tuple(stored.data.image_size) == (40, 48)
  assert stored.data.source == 'image_folder' and stored.name == 'folder'


def test_no_config_and_no_root_says_what_to_pass(tmp_path):
  done = launch(f'--workdir={tmp_path / "x"}', check=False)
  assert done.returncode == 2
  assert '--config is required for --mode train: a config file (configs/*.py), or your images: ' \
         '--config.data.root=<a folder with one subfolder per class>' in done.stderr


def test_a_source_s_own_validation_split_is_named_as_the_images_that_chose_and_auto_folds_is_refused(tmp_path):
  """--mode auto on a folder with no config and a val/ folder, which every trial validates on: auto.folds is
  refused in one line, and the final score is called what it is, optimistic (issue 77, item 6)."""
  root = image_folder(tmp_path / 'mine')
  val = image_folder(tmp_path / 'val-source', per_class=3)
  val.rename(root / "val")
  common = [f'--config.data.root={root}', '--config.train.epochs=2', '--config.explain.after_training=False',
            '--config.train.tensorboard=False', '--config.auto.keep=0', '--config.auto.trials=1',
            '--config.auto.confirm_seeds=()', '--config.auto.time_budget=20s']
  refused = launch('--mode=auto', f'--workdir={tmp_path / "refused"}', '--config.auto.folds=3', *common, check=False)
  assert refused.returncode == 2 and 'config.auto.folds=3: the source has its own validation split' in refused.stderr
  done = launch('--mode=auto', f'--workdir={tmp_path / "auto"}', *common)
  assert 'data: 3 classes (ant, bee, cow) and 24 training images' in done.stdout
  assert (tmp_path / 'auto' / 'final' / sidecar.METADATA).is_file()
  report = (tmp_path / 'auto' / 'auto_report.md').read_text()
  assert "the source's own validation split, whose images also chose it (optimistic" in report
