"""Per-label thresholds and decisions with classes in an order that is not alphabetical (issue 47).

--mode calibrate stores a multi-label model's thresholds by class name (metadata.json, written with sorted
keys); predict, serve, submit and export apply them back in the model's class order. With alphabetical classes a
mix-up between the two orders passes unseen, so every other multi-label test would miss it.

No training here: the session's quick multi-label run is copied with its classes reordered, its head's output
columns permuted to match (the same model, its classes listed in another order) and `data.class_names` set so
the labels are read in that order. Each path must then take the same decisions, class by class, as the
alphabetical original at the same thresholds by name, and the thresholds calibrate stores must be the ones
fitted on each class's own column.
"""
import json
import pathlib
import shutil

import numpy as np
import onnx
import onnxruntime
import orbax.checkpoint as ocp
import pandas as pd
import pytest

from fpclass.analysis import multilabel_metrics as mlm
from fpclass.analysis.calibration import Decision
from fpclass.config.inputs import DecodeSettings
from fpclass.data.decode import decode_files
from fpclass.infer.inference import load_trained
from fpclass.modes import calibrate as calibrate_mode
from fpclass.modes import export as export_mode
from fpclass.modes import predict as predict_mode
from fpclass.modes import submit as submit_mode
from fpclass.serve import service as serve_service
from fpclass.train import sidecar

ALPHABETICAL = ['circle', 'cross', 'ring', 'square', 'triangle']
ORDER = ['square', 'triangle', 'circle', 'ring', 'cross']   # no class keeps its place, and not reversed


def reorder_workdir(source: pathlib.Path, workdir: pathlib.Path, root: pathlib.Path, order) -> None:
  """`source`'s run, its classes listed in `order`: the head's output columns permuted in every checkpoint,
  the sidecar's class names and config.data.class_names in that order, the data read from `root`."""
  shutil.copytree(source, workdir)
  metadata = sidecar.read_metadata(workdir)
  perm = [metadata['class_names'].index(name) for name in order]
  for item in sorted(workdir.glob('checkpoints/*/*/model')):
    with ocp.StandardCheckpointer() as checkpointer:
      tree = checkpointer.restore(item.absolute())
    head = tree['params']['head']
    head['kernel'], head['bias'] = np.asarray(head['kernel'])[:, perm], np.asarray(head['bias'])[perm]
    shutil.rmtree(item)
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(item.absolute(), tree)
  metadata['class_names'] = list(order)
  metadata['config']['data'].update(class_names=list(order), root=str(root))
  sidecar.write_metadata(workdir, metadata)


@pytest.fixture(scope='module')
def runs(trained_multilabel, tmp_path_factory):
  """(alphabetical workdir, reordered workdir, their configs, the test image files, env): both read the
  synthetic set from one Kaggle-layout copy, so only the class order tells them apart."""
  shared, env, _ = trained_multilabel
  tmp = tmp_path_factory.mktemp('class-order')
  (synthetic,) = pathlib.Path(env['FPCLASS_CACHE']).glob('synthetic_multilabel/*/')
  root = tmp / 'shapes'
  shutil.copytree(synthetic, root)
  alphabetical, reordered = tmp / 'alphabetical', tmp / 'reordered'
  reorder_workdir(shared, alphabetical, root, ALPHABETICAL)
  reorder_workdir(shared, reordered, root, ORDER)
  configs = {w: sidecar.stored_config(w) for w in (alphabetical, reordered)}
  files = sorted((root / 'test').glob('*.png'))
  return alphabetical, reordered, configs, files


def tags(probs, names, thresholds: dict) -> list[set]:
  return [{n for n, p in zip(names, row) if p >= thresholds[n]} for row in probs]


def test_calibrate_stores_each_class_its_own_threshold_and_every_path_applies_it_by_name(runs):
  alphabetical, reordered, configs, files = runs
  config = configs[reordered]
  result = calibrate_mode.calibrate(config, reordered)
  stored = sidecar.read_metadata(reordered)['calibration']['thresholds']
  assert set(stored) == set(ORDER) and result['thresholds'] == stored
  # each name's threshold is the one fitted on that class's own column of the validation predictions
  frame = pd.read_csv(reordered / 'calibration_predictions.csv')
  truth = frame[[f'label_{n}' for n in ORDER]].to_numpy(np.uint8)
  probs = frame[[f'p_{n}' for n in ORDER]].to_numpy(np.float64)
  fitted = mlm.fit_thresholds(truth, probs, 1.0, ORDER)
  assert [stored[n] for n in ORDER] == pytest.approx(list(fitted.thresholds), abs=1e-9)
  assert len({round(t, 3) for t in stored.values()}) >= 3   # distinct enough for an order mix-up to show

  # the same thresholds by name in the alphabetical original: the two must now decide alike, class by class
  metadata = sidecar.read_metadata(alphabetical)
  metadata['calibration'] = {'thresholds': dict(stored)}
  sidecar.write_metadata(alphabetical, metadata)

  images, ok, _ = decode_files(files, DecodeSettings.from_config(config.data), split='predict', progress=False)
  assert ok.all()
  images = np.asarray(images)
  reference = {}
  for workdir, names in ((alphabetical, ALPHABETICAL), (reordered, ORDER)):
    trained = load_trained(configs[workdir], workdir)
    assert list(trained.class_names) == names
    probs_w, decided = Decision.for_model(trained, calibrated=True)(trained.logits(images, len(images)))
    reference[workdir] = (probs_w, [{names[k] for k in np.flatnonzero(row)} for row in decided])
  expected = reference[alphabetical][1]
  np.testing.assert_allclose(reference[reordered][0], reference[alphabetical][0][:, [ALPHABETICAL.index(n)
                                                                                    for n in ORDER]], atol=1e-6)
  assert reference[reordered][1] == expected == tags(reference[reordered][0], ORDER, stored)
  in_stored_order = dict(zip(ORDER, [stored[n] for n in sorted(stored)]))   # the mix-up: sorted values, model order
  assert tags(reference[reordered][0], ORDER, in_stored_order) != expected   # which this test would see

  # predict: the tags and p_<class> columns of predictions.csv
  listing = reordered / 'listing.csv'
  pd.DataFrame({'image': [str(f) for f in files]}).to_csv(listing, index=False)
  with config.unlocked():
    config.predict.inputs, config.predict.path_column, config.predict.output = str(listing), 'image', 'order.csv'
  predicted = pd.read_csv(predict_mode.predict(config, reordered), keep_default_na=False)
  # then the out-of-distribution score and flag every trained workdir carries
  assert list(predicted.columns) == ['path', 'tags', *[f'p_{n}' for n in ORDER], 'ood_score', 'unknown']
  assert [set(t.split()) for t in predicted['tags']] == expected
  assert all(t.split() == [n for n in ORDER if n in t.split()] for t in predicted['tags'])   # in class order

  # submit: submission.csv's tags, image by image
  submission = pd.read_csv(submit_mode.submit(config, reordered), keep_default_na=False, dtype=str)
  by_stem = dict(zip((f.stem for f in files), expected))
  assert [set(t.split()) for t in submission['tags']] == [by_stem[i] for i in submission['image_name']]

  # serve: the labels /predict answers, and the thresholds /metadata lists
  served = serve_service.load_service(config, reordered).predictor
  assert served.label_thresholds() == pytest.approx(stored) and list(served.label_thresholds()) == ORDER
  assert [set(r['labels']) for r in served.classify(images)] == expected

  # export: the ONNX outputs in class order, and the thresholds by name in model.json and the ONNX metadata
  with config.unlocked():
    config.export.formats = ('onnx',)
  written = export_mode.export(config, reordered)
  description = json.loads(written['description'].read_text())
  assert description['class_names'] == ORDER and description['calibration']['thresholds'] == pytest.approx(stored)
  props = {p.key: p.value for p in onnx.load(str(written['onnx'])).metadata_props}
  assert json.loads(props['class_names']) == ORDER and json.loads(props['thresholds']) == pytest.approx(stored)
  session = onnxruntime.InferenceSession(str(written['onnx']), providers=['CPUExecutionProvider'])
  logits = session.run(['logits'], {'images': images})[0]
  onnx_thresholds = json.loads(props['thresholds'])
  assert tags(1 / (1 + np.exp(-logits.astype(np.float64))), json.loads(props['class_names']), onnx_thresholds) == \
      expected
