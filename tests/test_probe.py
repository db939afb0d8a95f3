"""--mode probe: launch.py end to end on a tiny ImageFolder, its figures recomputed from its own files, its
features against torchvision's, its fit against scikit-learn's LogisticRegressionCV, the feature cache, and
bad input.

The data: 3 classes x 14 images of 32x32, coloured by class with a quarter of them drawn in another class's
colour, so that the probe is neither at chance nor perfect and its L2 strength is chosen inside the grid. Two
backbones, both ResNet-18 (one compile serves both): fpclass's seeded random init, and a state_dict that
torchvision wrote itself, with random BatchNorm statistics so that BatchNorm is not the identity.
"""
import dataclasses
import os
import pathlib

import numpy as np
import pandas as pd
import pytest
import threadpoolctl
import torch
import torchvision
from PIL import Image
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegressionCV
from sklearn.preprocessing import StandardScaler

from fpclass.analysis import stats
from fpclass.config.inputs import DataSettings
from fpclass.config.outputs import ProbeSettings
from fpclass.config.run import RunSettings
from fpclass.data import pipeline, splits
from fpclass.errors import UserInputError
from fpclass.models import probe_backbones
from fpclass.modes.runner import run
from fpclass.probe import linear_probe, pooled_features
from fpclass.probe import screen as probe_mode
from fpclass.train.validation import validate
from tests import content
from tests.conftest import IN_PROCESS_XLA_FLAGS, launch, load_config
from tests.parity import randomise_torch_bn

CLASSES = ('heel_hook', 'others', 'toe_hook')
COLOURS = np.array([[200, 70, 60], [70, 190, 80], [60, 80, 200]])
PER_CLASS = 14


def write_folder(root: pathlib.Path) -> None:
  rng = np.random.default_rng(0)
  for c, name in enumerate(CLASSES):
    (root / name).mkdir(parents=True)
    for i in range(PER_CLASS):
      shown = c if rng.random() > 0.25 else int(rng.integers(3))
      pixels = np.clip(COLOURS[shown] + rng.normal(0, 60, (36, 36, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(pixels).save(root / name / f'{i:02d}.png')


@dataclasses.dataclass
class ProbeRun:
  workdir: pathlib.Path
  cache: pathlib.Path
  weights: list
  overrides: dict

  def config(self, **changes):
    return load_config('configs/climbing.py:probe', **{**self.overrides, **changes})


@pytest.fixture(scope='module')
def probe_run(tmp_path_factory):
  root = tmp_path_factory.mktemp('probe-data') / 'climbing'
  write_folder(root)
  folder = tmp_path_factory.mktemp('probe-weights')
  weights = [folder / 'r18a.pth', folder / 'r18b.pth']
  for seed, path in enumerate(weights):
    torch.manual_seed(seed)
    torch.save(randomise_torch_bn(torchvision.models.resnet18(weights=None), seed).state_dict(), path)
  cache, workdir = tmp_path_factory.mktemp('probe-cache'), tmp_path_factory.mktemp('probe')
  overrides = {'data.root': str(root), 'data.cache_dir': str(cache), 'data.image_size': (32, 32),
               'data.num_folds': 3, 'probe.inner_folds': 3, 'probe.backbones': tuple(f'resnet18={path}' for path in weights)}
  flags = [f'--config.{k}={v if isinstance(v, str) else repr(v)}' for k, v in overrides.items()]
  # Compiled as this process compiles: a test runs the probe again here and compares the tables exactly.
  launch('--config=configs/climbing.py:probe', '--mode=probe', f'--workdir={workdir}', *flags,
         env={'XLA_FLAGS': IN_PROCESS_XLA_FLAGS})
  return ProbeRun(workdir, cache, weights, overrides)


def test_tables_plot_and_report_agree_with_the_predictions(probe_run):
  workdir = probe_run.workdir
  results = pd.read_csv(workdir / 'probe_results.csv')
  folds = pd.read_csv(workdir / 'probe_folds.csv')
  predictions = pd.read_csv(workdir / 'probe_predictions.csv')
  differences = pd.read_csv(workdir / 'probe_differences.csv')
  assert results['backbone'].tolist() == ['resnet18=r18a.pth', 'resnet18=r18b.pth']
  assert results['feature_dim'].tolist() == [512, 512] and not results['feature_cached'].any()
  assert (results['feature_pass_seconds'] > 0).all() and (results['fit_seconds'] > 0).all()
  assert len(folds) == 2 * 3 and set(folds['c']) <= set(ProbeSettings().c_values)

  names = [f'p_{c}' for c in CLASSES]
  for (backbone, seed, fold), rows in predictions.groupby(['backbone', 'seed', 'fold']):
    probs = rows[names].to_numpy()
    labels = np.array([CLASSES.index(c) for c in rows['label']])
    row = folds[(folds['backbone'] == backbone) & (folds['seed'] == seed) & (folds['fold'] == fold)].iloc[0]
    assert np.allclose(probs.sum(1), 1.0, atol=1e-6) and row['n_val'] == len(rows)
    assert row['accuracy'] == pytest.approx(skm.accuracy_score(labels, probs.argmax(1)))
    assert row['macro_f1'] == pytest.approx(skm.f1_score(labels, probs.argmax(1), average='macro'))
    assert row['log_loss'] == pytest.approx(skm.log_loss(labels, probs, labels=[0, 1, 2]), rel=1e-5)
  for backbone, rows in predictions.groupby('backbone'):   # every image once per backbone (one seed)
    assert sorted(rows['id']) == sorted(f'{c}/{i:02d}.png' for c in CLASSES for i in range(PER_CLASS)), backbone

  ratio = float(np.mean(folds['n_val'] / folds['n_train']))
  for _, r in results.iterrows():
    for metric in ('accuracy', 'macro_f1', 'log_loss'):
      ci = stats.corrected_interval(folds.loc[folds['backbone'] == r['backbone'], metric], ratio)
      assert (r[f'{metric}_mean'], r[f'{metric}_ci_low'], r[f'{metric}_ci_high']) == pytest.approx(
          (ci.mean, ci.low, ci.high))
  best = results.sort_values(['accuracy_mean', 'log_loss_mean'], ascending=[False, True])['backbone'].iloc[0]
  other = [b for b in results['backbone'] if b != best]
  assert differences['best'].unique().tolist() == [best] and differences['backbone'].unique().tolist() == other
  paired = folds.set_index(['backbone', 'seed', 'fold'])['accuracy']
  row = differences[differences['metric'] == 'accuracy'].iloc[0]
  assert row['mean_difference'] == pytest.approx(np.mean(paired[other[0]].to_numpy() - paired[best].to_numpy()))

  report = (workdir / 'report.md').read_text()
  assert '## Linear probe: which backbone?' in report and f'from the best backbone, `{best}`' in report
  content.check_not_blank(workdir / 'probe_results.png')


def test_features_match_torchvision_and_the_fit_matches_logistic_regression_cv(probe_run):
  config = probe_run.config()
  images, labels, _, _ = probe_mode.labelled_set(pipeline.decode_source(DataSettings.from_config(config.data), progress=False))
  run, probe = RunSettings.from_config(config), ProbeSettings.from_config(config.probe)
  backbone = probe_backbones.parse_backbones(probe, run.model)[1]
  found = pooled_features.features(run, probe, backbone, images, CLASSES, pooled_features.images_digest(images))
  assert found.cached   # written by the launch, another process

  # torchvision's own ResNet-18 on the same weights file: its pooled features, before the classifier.
  module = torchvision.models.resnet18(weights=None)
  module.load_state_dict(torch.load(probe_run.weights[1], weights_only=True))
  module.fc = torch.nn.Identity()
  x = (images / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  with torch.no_grad():
    reference = module.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
  tolerance = 1e-4 * np.abs(reference).max()
  assert np.abs(found.values - reference).max() <= tolerance
  assert reference.std(0).mean() > 20 * tolerance     # the images' features differ by far more than that

  # scikit-learn on the same cached features and splits: standardised, then LogisticRegressionCV.
  settings = probe
  folds = probe_mode.outer_folds(labels, run.data.split, probe)
  accuracy, chosen = [], []
  for split in folds:
    scaler = StandardScaler().fit(found.values[split.train_index])
    train_labels = labels[split.train_index]
    model = LogisticRegressionCV(
        Cs=list(settings.c_values), cv=linear_probe.inner_folds(train_labels, 3, split.seed, 3),
        scoring='neg_log_loss', l1_ratios=(0.0,), max_iter=5000, use_legacy_attributes=False)
    with threadpoolctl.threadpool_limits(1, user_api='blas'):   # as fpclass fits (two threads crawl when busy)
      model.fit(scaler.transform(found.values[split.train_index]), train_labels)
    predicted = model.predict(scaler.transform(found.values[split.val_index]))
    accuracy.append(skm.accuracy_score(labels[split.val_index], predicted))
    chosen.append(model.C_)
  results = pd.read_csv(probe_run.workdir / 'probe_results.csv').set_index('backbone')
  probe_folds = pd.read_csv(probe_run.workdir / 'probe_folds.csv')
  assert abs(results.loc[backbone.label, 'accuracy_mean'] - np.mean(accuracy)) <= 0.005
  assert probe_folds.loc[probe_folds['backbone'] == backbone.label, 'c'].tolist() == pytest.approx(chosen)
  assert 0.4 < np.mean(accuracy) < 1.0 and min(chosen) < max(settings.c_values)   # informative, not saturated


def test_a_binary_fit_is_scikit_learns_binary_logistic_regression():
  """Two classes: one weight vector with class 0's logit at 0, as scikit-learn fits them (a softmax over two
  would halve the penalty, so the same C would choose differently). Synthetic features, no backbone."""
  rng = np.random.default_rng(1)
  labels = np.arange(90) % 2
  features = rng.normal(size=(90, 40)) + 0.15 * rng.normal(size=(2, 40))[labels]
  folds = [linear_probe.OuterFold(0, f, t, v) for f, (t, v) in enumerate(splits.kfold_indices(labels, 3, 0))]
  c_values = ProbeSettings().c_values
  for fit in linear_probe.fit_folds(features, labels, folds, num_classes=2, c_values=c_values, inner=3):
    train, val = fit.split.train_index, fit.split.val_index
    scaler = StandardScaler().fit(features[train])
    with threadpoolctl.threadpool_limits(1, user_api='blas'):
      model = LogisticRegressionCV(Cs=list(c_values), cv=linear_probe.inner_folds(labels[train], 3, 0, 2),
                                   scoring='neg_log_loss', l1_ratios=(0.0,), max_iter=5000,
                                   use_legacy_attributes=False).fit(scaler.transform(features[train]), labels[train])
    assert fit.c == pytest.approx(model.C_) and fit.c < max(c_values)
    assert np.abs(fit.probabilities - model.predict_proba(scaler.transform(features[val]))).max() < 2e-3


def test_a_second_run_reuses_the_features_and_other_pixels_do_not(probe_run, tmp_path):
  cached = sorted((probe_run.cache / pooled_features.FOLDER).glob('*.npz'))
  stamps = [os.stat(p).st_mtime_ns for p in cached]
  assert len(cached) == 2
  summary = run('probe', probe_run.config(), tmp_path / 'again')
  assert summary['feature_cached'].all()
  assert [os.stat(p).st_mtime_ns for p in cached] == stamps
  first = pd.read_csv(probe_run.workdir / 'probe_folds.csv')
  again = pd.read_csv(tmp_path / 'again' / 'probe_folds.csv')
  pd.testing.assert_frame_equal(first, again)

  config = probe_run.config()
  images, _, _, _ = probe_mode.labelled_set(pipeline.decode_source(DataSettings.from_config(config.data), progress=False))
  typed, probe = RunSettings.from_config(config), ProbeSettings.from_config(config.probe)
  backbone = probe_backbones.parse_backbones(probe, typed.model)[1]
  original = pooled_features.features(typed, probe, backbone, images, CLASSES, pooled_features.images_digest(images))
  # Other pixels, another entry: here every image mirrored, which the flip TTA check below needs anyway.
  mirrored = np.ascontiguousarray(images[:, :, ::-1])
  flipped = pooled_features.features(typed, probe, backbone, mirrored, CLASSES, pooled_features.images_digest(mirrored))
  assert original.cached and not flipped.cached and flipped.path != original.path

  # Flip TTA: the mean of the image's features and its mirror image's.
  tta = probe_run.config(**{'probe.flip_tta': True})
  both = pooled_features.features(RunSettings.from_config(tta), ProbeSettings.from_config(tta.probe), backbone, images,
                                  CLASSES, pooled_features.images_digest(images))
  assert not both.cached and both.path != original.path
  assert np.allclose(both.values, (original.values + flipped.values) / 2, atol=1e-5)


def test_a_source_validation_split_joins_the_labelled_set_and_seeds_repeat_the_folds(probe_run):
  def split(n, start):
    return pipeline.ArraySplit(np.full((n, 2, 2, 3), start, np.uint8), np.arange(n) % 3, [f'{start}-{i}' for i in range(n)])

  decoded = pipeline.Decoded('folder', CLASSES, split(12, 1), split(6, 2), None, [], [], None)
  images, labels, ids, note = probe_mode.labelled_set(decoded)
  assert len(images) == len(labels) == len(ids) == 18 and ids[12] == '2-0' and 'validation' in note
  seeded = probe_run.config(**{'probe.seeds': (0, 1)})
  folds = probe_mode.outer_folds(labels, RunSettings.from_config(seeded).data.split,
                                 ProbeSettings.from_config(seeded.probe))
  assert [(f.seed, f.fold) for f in folds] == [(s, f) for s in (0, 1) for f in range(3)]
  for seed in (0, 1):
    val = np.sort(np.concatenate([f.val_index for f in folds if f.seed == seed]))
    assert np.array_equal(val, np.arange(18))     # each seed's folds cover every image once
  assert not all(np.array_equal(a.val_index, b.val_index) for a, b in zip(folds[:3], folds[3:]))


def test_bad_input_is_named(probe_run, tmp_path):
  with pytest.raises(UserInputError, match=r"config\.probe\.backbones: 'resnet19' is not a registered backbone "
                                            r"with pretrained weights; choose from \[.*'resnet18'.*'vit_b16'"):
    validate(probe_run.config(**{'probe.backbones': ('resnet19',)}))
  with pytest.raises(UserInputError, match=r'config\.probe\.backbones: resnet18=\(random init\) is listed twice'):
    validate(probe_run.config(**{'probe.backbones': ('resnet18', 'resnet18=', 'resnet18=imagenet')}))
  with pytest.raises(UserInputError, match=r"config\.probe\.solver='newton': must be one of"):
    validate(probe_run.config(**{'probe.solver': 'newton'}))
  with pytest.raises(UserInputError, match=r'config\.probe\.c_values=\(0\.0,\): must be positive'):
    validate(probe_run.config(**{'probe.c_values': (0.0,)}))
  with pytest.raises(UserInputError, match=r'config\.probe\.backbones is empty'):
    run('probe', probe_run.config(**{'probe.backbones': ()}), tmp_path / 'empty')
  # Too few images of a class for the inner folds: refused before any feature pass.
  cache = tmp_path / 'cache'
  with pytest.raises(UserInputError, match=r'config\.probe\.inner_folds=12: .* only [0-9] examples'):
    run('probe', probe_run.config(**{'probe.inner_folds': 12, 'data.cache_dir': str(cache)}), tmp_path / 'few')
  assert not (cache / pooled_features.FOLDER).exists()


def test_a_deadline_starts_no_backbone_after_it_and_names_those_left_out(probe_run, monkeypatch):
  """Auto's screen gives the probe a deadline: a backbone whose features end past it is the last one probed (the
  second is named in left_out), and a deadline already passed probes none (None). The clock is the test's: each
  backbone's features take 10 s of it (cached features, so no real time to speak of)."""
  config = probe_run.config()
  typed, probe = RunSettings.from_config(config), ProbeSettings.from_config(config.probe)
  backbones = probe_backbones.parse_backbones(probe, typed.model)
  clock = [1000.0]
  features = pooled_features.features

  def slow_features(*args, **kwargs):
    clock[0] += 10.0
    return features(*args, **kwargs)

  monkeypatch.setattr(probe_mode.time, 'monotonic', lambda: clock[0])
  monkeypatch.setattr(pooled_features, 'features', slow_features)
  found = probe_mode.run_probe(typed, probe, backbones, deadline=1005.0)
  assert list(found.summary['backbone']) == [backbones[0].label] and found.left_out == (backbones[1].label,)
  assert probe_mode.run_probe(typed, probe, backbones, deadline=clock[0]) is None
  everything = probe_mode.run_probe(typed, probe, backbones, deadline=clock[0] + 100.0)
  assert len(everything.summary) == 2 and everything.left_out == ()
