"""--mode export of a multi-label model: the ONNX file's K logits, read with the sigmoid and the per-label
thresholds it carries in its metadata, give the same tag sets as --mode predict on 200 images; the StableHLO
artifact is written and model.json records the same thresholds."""
import json
import pathlib
import shutil

import jax
import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest

from fpclass.analysis.calibration import Decision
from fpclass.config.inputs import DecodeSettings
from fpclass.data.decode import decode_files
from fpclass.infer.inference import load_trained
from fpclass.modes.runner import run
from fpclass.train import sidecar
from tests.conftest import MULTILABEL, launch, load_config

pytestmark = pytest.mark.filterwarnings('ignore:jax.core.DropVar is deprecated:DeprecationWarning')
NAMES = ['circle', 'cross', 'ring', 'square', 'triangle']


def sigmoid(logits):
  return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))


def tag_sets(probs, thresholds):
  return [' '.join(n for n, p, t in zip(NAMES, row, thresholds) if p >= t) for row in probs]


def image_files(env, n=200):
  """`n` files of the synthetic set the run trained on: all 60 test images, then train images."""
  (root,) = pathlib.Path(env['FPCLASS_CACHE']).glob('synthetic_multilabel/*/')
  files = sorted((root / 'test').glob('*.png')) + sorted((root / 'train').glob('*.png'))
  assert len(files) == 300
  return files[:n]


def predicted_tags(workdir, env, files, listing):
  """--mode predict's `tags` column for `files`, in order (calibrated: at the stored thresholds)."""
  pd.DataFrame({'image': [str(f) for f in files]}).to_csv(listing, index=False)
  launch(f'--workdir={workdir}', '--mode=predict', f'--config.predict.inputs={listing}',
         '--config.predict.path_column=image', '--config.predict.output=tags_check.csv', env=env)
  frame = pd.read_csv(workdir / 'tags_check.csv', keep_default_na=False, dtype=str)
  assert list(frame['path']) == [str(f) for f in files]
  return list(frame['tags'])


def test_onnx_tags_equal_predict_and_stablehlo_records_the_thresholds(trained_multilabel, tmp_path):
  shared, env, _ = trained_multilabel
  workdir = tmp_path / 'run'
  shutil.copytree(shared, workdir)  # calibrate and export write into the workdir; the shared one stays as trained
  # --mode calibrate and --mode export through the runner launch.py calls, on the config launch.py reads from the
  # workdir when given none (configs/workdir.py): in this process, two launch.py start-ups fewer. --mode predict,
  # the side the exported graph is compared with, still runs through launch.py.
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
    for mode in ('calibrate', 'export'):
      run(mode, sidecar.stored_config(workdir), workdir)
  stored = json.loads((workdir / 'metadata.json').read_text())['calibration']['thresholds']
  assert list(stored) == NAMES and any(abs(t - 0.5) > 1e-3 for t in stored.values())  # fitted, not the default

  # The ONNX metadata says how to read the output, with the thresholds as JSON by class name.
  model = onnx.load(str(workdir / 'export' / 'model.onnx'))
  props = {p.key: p.value for p in model.metadata_props}
  assert props['head'] == 'multilabel' and json.loads(props['class_names']) == NAMES
  assert 'sigmoid(logit) per class' in props['output']
  thresholds = json.loads(props['thresholds'])
  assert thresholds == pytest.approx(stored) and list(thresholds) == NAMES

  # 200 image files, decoded as fpclass decodes them (the quick config: 32x32 RGB).
  files = image_files(env)
  config = load_config(MULTILABEL.split('=', 1)[1])
  images, ok, _ = decode_files(files, DecodeSettings.from_config(config.data), split='predict', progress=False)
  assert ok.all() and images.shape == (200, 32, 32, 3) and images.dtype == np.uint8
  session = onnxruntime.InferenceSession(str(workdir / 'export' / 'model.onnx'), providers=['CPUExecutionProvider'])
  logits = session.run(['logits'], {'images': np.asarray(images)})[0]
  assert logits.shape == (200, len(NAMES))
  got = tag_sets(sigmoid(logits), [thresholds[n] for n in NAMES])

  expected = predicted_tags(workdir, env, files, tmp_path / 'files.csv')
  # The restored model decided as predict decides (Decision at the stored thresholds), in process.
  trained = load_trained(config, workdir)
  reference = trained.logits(np.asarray(images), batch_size=50)
  np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-5)
  _, decided = Decision.for_model(trained, calibrated=True)(reference)
  in_process = [' '.join(n for n, on in zip(NAMES, row) if on) for row in decided]
  assert got == expected and got == in_process
  # Not a trivial agreement: the tag sets vary, and the fitted thresholds decide differently from 0.5.
  assert len(set(got)) > 3 and got != tag_sets(sigmoid(logits), [0.5] * len(NAMES))

  # StableHLO: written, equal logits, and model.json records the head, the reading and the thresholds.
  description = json.loads((workdir / 'export' / 'model.json').read_text())
  assert description['output']['head'] == 'multilabel' and description['output']['shape'] == ['batch', len(NAMES)]
  assert description['calibration']['thresholds'] == pytest.approx(stored)
  assert description['calibration']['thresholds_source'] == '--mode calibrate'
  assert description['artifacts']['stablehlo']['file'] == 'model.jax_export'
  exported = jax.export.deserialize(bytearray((workdir / 'export' / 'model.jax_export').read_bytes()))
  logits, _ = exported.call(np.asarray(images[:8]))   # and the OOD score (config.ood), the second output
  np.testing.assert_allclose(np.asarray(logits), reference[:8], rtol=0, atol=1e-5)


def test_uncalibrated_multilabel_export_records_half_for_every_class(trained_multilabel, tmp_path):
  """Before --mode calibrate, every class's threshold is 0.5, in model.json and in the ONNX metadata."""
  from fpclass.modes import export as export_mode
  shared, _, _ = trained_multilabel
  workdir = tmp_path / 'run'
  shutil.copytree(shared, workdir)
  metadata = json.loads((workdir / 'metadata.json').read_text())
  metadata.pop('calibration', None)
  (workdir / 'metadata.json').write_text(json.dumps(metadata))
  config = load_config(MULTILABEL.split('=', 1)[1], **{'export.formats': ('onnx',)})
  written = export_mode.export(config, workdir)
  description = json.loads(written['description'].read_text())
  assert description['calibration']['thresholds'] == dict.fromkeys(NAMES, 0.5)
  assert description['calibration']['thresholds_source'].startswith('default 0.5')
  props = {p.key: p.value for p in onnx.load(str(written['onnx'])).metadata_props}
  assert json.loads(props['thresholds']) == dict.fromkeys(NAMES, 0.5)
