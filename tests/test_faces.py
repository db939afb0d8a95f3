"""data.source=lfw_faces: scikit-image's 200 LFW crops as a source (the `samples` extra), configs/faces.py through
launch.py, and the one line a missing extra gets."""
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fpclass.config.inputs import DataSettings
from fpclass.data import pipeline
from fpclass.data.lfw_faces import load_lfw_faces_source
from fpclass.errors import UserInputError
from tests.conftest import launch, load_config

skimage_data = pytest.importorskip('skimage.data')


def crops() -> np.ndarray:
  """The 200 crops as scikit-image gives them (float64 in [0, 1]), on the 0..255 scale of every source."""
  return np.round(skimage_data.lfw_subset() * 255).astype(np.uint8)


def test_the_source_lists_the_200_crops_faces_first_with_ids_naming_class_and_row():
  source = pipeline.list_raw_source(DataSettings.from_config(load_config('configs/faces.py').data))
  assert source.name == 'lfw_faces' and source.class_names == ('face', 'not_face')
  assert source.val is None and source.test is None
  train = source.train
  assert train.images.shape == (200, 25, 25, 1) and train.images.dtype == np.uint8
  np.testing.assert_array_equal(train.images[..., 0], crops())
  np.testing.assert_array_equal(train.labels, np.repeat([0, 1], 100))
  assert train.ids == [f'face_{i:03d}' for i in range(100)] + [f'not_face_{i:03d}' for i in range(100, 200)]


def test_the_config_splits_them_stratified_at_their_own_size():
  dataset = pipeline.load_dataset(DataSettings.from_config(load_config('configs/faces.py').data), progress=False)
  assert dataset.train.images.shape == (160, 25, 25, 1) and dataset.val.images.shape == (40, 25, 25, 1)
  assert np.bincount(dataset.val.labels).tolist() == [20, 20]
  rows = {f'{name}_{i:03d}': i for i in range(200) for name in ('face', 'not_face')}
  for split in (dataset.train, dataset.val):   # each image is its crop, unresampled
    np.testing.assert_array_equal(split.images[..., 0], crops()[[rows[i] for i in split.ids]])


def test_without_scikit_image_the_source_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'skimage.data', None)   # `from skimage.data import ...` raises ImportError
  with pytest.raises(UserInputError, match=r"^config.data.source='lfw_faces' .*pip install 'fpclass\[samples\]'$"):
    load_lfw_faces_source(None)


def test_launch_without_scikit_image_fails_in_one_line(tmp_path):
  shadow = tmp_path / 'shadow' / 'skimage'
  shadow.mkdir(parents=True)
  (shadow / '__init__.py').write_text("raise ImportError('scikit-image is not installed here')\n")
  result = launch('--config=configs/faces.py:quick', f'--workdir={tmp_path / "run"}', check=False,
                  env={'PYTHONPATH': str(shadow.parent)})
  assert result.returncode == 2, result.stderr[-2000:]
  assert "pip install 'fpclass[samples]'" in result.stderr.strip().splitlines()[-1]
  assert 'Traceback' not in result.stderr


def test_a_quick_run_leaves_out_the_excluded_crops_and_predicts_them_from_png_files(tmp_path):
  held_out = [f'face_{i:03d}' for i in range(0, 100, 20)] + [f'not_face_{i:03d}' for i in range(100, 200, 20)]
  pd.DataFrame({'id': held_out}).to_csv(tmp_path / 'exclude.csv', index=False)
  workdir = tmp_path / 'run'
  launch('--config=configs/faces.py:quick', f'--workdir={workdir}', '--config.explain.after_training=False',
         f'--config.data.exclude_csv={tmp_path / "exclude.csv"}')
  val = pd.read_csv(workdir / 'val_predictions.csv')
  assert len(val) == 38 and not set(val['id']) & set(held_out)            # a 20% holdout of the 190 left
  assert (val['label'] == val['id'].str.rsplit('_', n=1).str[0]).all()    # each id's class is its label
  assert sorted(pd.read_csv(workdir / 'curation.csv')['file']) == sorted(held_out)
  scores = pd.read_json(workdir / 'scores.json', typ='series')
  assert scores['n'] == 38 and list(scores['class_names']) == ['face', 'not_face']

  # The held-out crops and the validation crops as PNG files: predict decodes them to the pixels training saw,
  # so a validation image's probabilities are the ones evaluation wrote.
  row = lambda image_id: int(image_id.rsplit('_', 1)[1])
  pngs = tmp_path / 'pngs'
  pngs.mkdir()
  for image_id in [*held_out, *val['id']]:
    Image.fromarray(crops()[row(image_id)]).save(pngs / f'{image_id}.png')
  pd.DataFrame({'path': [f'pngs/{i}.png' for i in [*held_out, *val['id']]]}).to_csv(tmp_path / 'test.csv',
                                                                                     index=False)
  launch(f'--workdir={workdir}', '--mode=predict', f'--config.predict.inputs={tmp_path / "test.csv"}')
  predicted = pd.read_csv(workdir / 'predictions.csv').set_index('path')
  assert len(predicted) == 48 and set(predicted['predicted']) <= {'face', 'not_face'}
  np.testing.assert_allclose(predicted.loc[[f'pngs/{i}.png' for i in val['id']], 'p_face'], val['p_face'],
                             atol=1e-5)
