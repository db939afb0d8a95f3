"""`--mode sweep`: config variants, each trained over k folds x seeds along the model axis, summarised with
means, spreads and confidence intervals, compared pairwise with a baseline, and calibrated.

    <workdir>/sweep_results.md, .csv   per variant: mean ± std [95% CI] of accuracy, macro F1, ROC AUC; ECE;
                                       parameters; seconds per model-epoch (multi-label: mAP, macro F1)
    <workdir>/sweep_differences.csv    per variant and metric: paired difference from the baseline
    <workdir>/sweep_models.csv         one row per trained model (variant, split, seed, metrics, epochs)
    <workdir>/sweep_results.png        bars with 95% CI error bars, and every model's value
    <workdir>/<variant>/fold<k>/       the best seed's model of fold k: an ordinary workdir
    <workdir>/<variant>/               experiment.json, calibration.json, reliability.png, report.md

A variant is `'name: key=value; key=value'` applied to the given config (`sweep.variants`); with none,
the config itself is the one variant, so `--mode sweep` on any config gives mean ± std over seeds.
A relaunch skips variants whose experiment.json matches the config (an interrupted variant is retrained).
Multi-label models are scored by mAP and macro F1 at 0.5 (`sweep_report.model_scores`).
"""
import dataclasses
import hashlib
import json
import pathlib
import time

import jax
import ml_collections
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fpclass import fileio
from fpclass.analysis import calibration, sweep_report
from fpclass.config.inputs import AugmentSettings
from fpclass.config.settings import ConfigError
from fpclass.config.variants import parse_variant
from fpclass.data import pipeline, stream
from fpclass.errors import UserInputError
from fpclass.infer.calibrate_models import calibrate
from fpclass.models import model_keys
from fpclass.models.heads import head_of
from fpclass.runtime import report, sharding
from fpclass.runtime.sharding import DataParallel
from fpclass.train import axis, checkpoint, feature_cache, member_store, memory_plan, optim
from fpclass.train import members as members_lib
from fpclass.train.axis import Split
from fpclass.train.engine import Engine, TrainData, phase_config
from fpclass.train.members import Member, MemberResult
from fpclass.train.records import MemoryRecord, StopOnSignals
from fpclass.train.shared_work import SharedWork
from fpclass.train.task import Normalisation, build_task, common_batch
from fpclass.train.validation import validate

EXPERIMENT_FILE = 'experiment.json'
# Keys that do not change what a finished variant trained, so its results are reused across them.
REUSABLE_CHANGES = ('name', 'eval.', 'submit.', 'data.cache_dir', 'data.decode_workers', 'train.log_every_steps',
                    'sweep.variants', 'sweep.baseline', 'sweep.model_axis', 'sweep.models_per_chunk',
                    'sweep.memory_fraction', 'sweep.ece_bins', 'sweep.threshold_metric')


@dataclasses.dataclass
class Variant:
  name: str
  changes: dict
  config: ml_collections.ConfigDict

  def describe(self) -> str:
    return sweep_report.describe_changes(self.changes)


def apply_changes(config, changes: dict, where: str) -> ml_collections.ConfigDict:
  """`config` with `changes` ({dotted key: value}) applied; every key must exist. Changing model.name starts
  the model section from the new model's keys (`fpclass.models.model_keys`), as the command line does."""
  try:
    out = model_keys.completed(config, changes.get('model.name'))
  except UserInputError as e:
    raise UserInputError(f'{where}: {e}') from None
  for key, value in changes.items():
    *parents, leaf = key.split('.')
    node = out
    try:
      for p in parents:
        node = node[p]
      if leaf not in node:
        raise KeyError(leaf)
      if isinstance(value, (list, tuple)) and isinstance(node[leaf], (list, tuple)):
        value = type(node[leaf])(value)   # a ConfigDict field keeps its sequence type
      with node.unlocked():
        node[leaf] = value
    except (KeyError, AttributeError):
      if parents == ['model']:
        raise UserInputError(f'{where}: {model_keys.unknown_key(out.model.name, leaf)}') from None
      raise UserInputError(f'{where}: {key!r} is not a config key') from None
    except TypeError as e:
      raise UserInputError(f'{where}: {key}={value!r}: {e}') from None
  return out


def build_variants(config) -> list[Variant]:
  specs = list(config.sweep.variants) or ['base:']
  variants, seen = [], set()
  for spec in specs:
    try:
      name, changes = parse_variant(spec)
    except ConfigError as e:
      raise UserInputError(str(e)) from None
    if name in seen:
      raise UserInputError(f'config.sweep.variants: the name {name!r} is used twice')
    seen.add(name)
    variant_config = apply_changes(config, changes, f'config.sweep.variants ({name})')
    try:
      validate(variant_config)
    except UserInputError as e:
      raise UserInputError(f'config.sweep.variants ({name}): {e}') from None
    variants.append(Variant(name, changes, variant_config))
  return variants


def check_sweep_config(config, variants: list[Variant]) -> None:
  sweep = config.sweep
  seeds = list(sweep.seeds)
  if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
    raise UserInputError(f'config.sweep.seeds={tuple(seeds)}: give distinct integers, at least one')
  folds = list(sweep.folds)
  if len(set(folds)) != len(folds) or not all(isinstance(f, int) and -1 <= f < int(config.data.num_folds)
                                              for f in folds):
    raise UserInputError(f'config.sweep.folds={tuple(folds)}: give distinct fold numbers in [0, '
                         f'data.num_folds={config.data.num_folds}), or -1 for the holdout; () means all folds')
  axis.resolve_form(sweep.model_axis)
  if not 0.0 < float(sweep.memory_fraction) <= 1.0:
    raise UserInputError(f'config.sweep.memory_fraction={sweep.memory_fraction}: must be in (0, 1]')
  if int(sweep.models_per_chunk) < 0:
    raise UserInputError(f'config.sweep.models_per_chunk={sweep.models_per_chunk}: use 0 (automatic) or more')
  if int(sweep.ece_bins) < 2:
    raise UserInputError(f'config.sweep.ece_bins={sweep.ece_bins}: use at least 2')
  if sweep.threshold_metric not in calibration.THRESHOLD_METRICS:
    raise UserInputError(f'config.sweep.threshold_metric={sweep.threshold_metric!r}: choose one of '
                         f'{calibration.THRESHOLD_METRICS}')
  tasks = {v.name: v.config.data.task for v in variants}
  if len(set(tasks.values())) > 1:
    raise UserInputError(f'config.sweep.variants: single-label and multi-label variants cannot be compared '
                         f'(data.task {tasks}); sweep them separately')
  if sweep.baseline and sweep.baseline not in [v.name for v in variants]:
    raise UserInputError(f'config.sweep.baseline={sweep.baseline!r}: not one of the variants '
                         f'{[v.name for v in variants]}')


def plan_members(decoded: pipeline.Decoded, config) -> tuple[TrainData, list[Member], str, int]:
  """(data, members, note, device budget): the arrays every member indexes (in memory, or streamed when over
  config.data.device_memory_budget) and one member per split x seed. Splits are exactly those
  `pipeline.split_dataset` makes for `data.fold=k`, so each member sees a solo run's data."""
  folds, seeds = list(config.sweep.folds), list(config.sweep.seeds)
  pool, val, d = decoded.pool, decoded.val, config.data
  if val is not None:
    if folds not in ([], [-1]):
      raise UserInputError(f'config.sweep.folds={tuple(folds)}: the source has its own validation split, so '
                           'there are no folds to choose; use () or (-1,)')
    split_index = {-1: (np.arange(len(pool)), np.arange(len(val)))}
    note = 'the source\'s own validation split'
  else:
    folds = folds or list(range(int(d.num_folds)))
    split_index = pipeline.split_indices(pool.labels, folds, d, decoded.class_names)
    stratified = 'per-label stratified' if pool.labels.ndim == 2 else 'stratified'
    note = (f'{len(folds)} of {d.num_folds} {stratified} folds' if any(f >= 0 for f in folds) else
            f'the {stratified} {d.val_fraction:.0%} holdout') + f' (split_seed {d.split_seed})'
  (train, val, _), budget = stream.place_splits(config, pool, val if val is not None else pool)
  train_split = Split(train.images, _member_labels(train.labels))
  val_split = train_split if decoded.val is None else Split(val.images, _member_labels(val.labels))
  members = [Member(f, int(s), np.asarray(t, np.int64), np.asarray(v, np.int64))
             for f, (t, v) in split_index.items() for s in seeds]
  return TrainData(decoded.class_names, train_split, val_split), members, note, budget


def _member_labels(labels: np.ndarray) -> np.ndarray:
  """Class indices as int32; a multi-label 0/1 matrix as it is (uint8), as a solo run trains on it."""
  return labels if labels.ndim == 2 else labels.astype(np.int32)


def _index_hash(index) -> str:
  return hashlib.sha1(np.asarray(index, np.int64).tobytes()).hexdigest()[:12]


def _finished(exp_dir: pathlib.Path, config_json: dict):
  path = exp_dir / EXPERIMENT_FILE
  if not path.exists():
    return None
  stored = json.loads(path.read_text())
  diffs = checkpoint.config_differences(stored['config'], config_json, ignore=REUSABLE_CHANGES)
  if diffs:
    raise UserInputError(f'{exp_dir} holds results of a different config for this variant: ' + '; '.join(diffs[:10])
                         + '. Use a new --workdir, or the original flags.')
  return stored


def train_share(config, train_data: TrainData, members: list[Member], exp_dir, budget: int, log_prefix: str = '',
                stop=None, shared=None) -> list[dict]:
  """Trains this process's share of the members not finished before (each written to the member store as
  it finishes); returns the plan of each chunk it trained."""
  config_json = checkpoint.config_as_json(config)
  todo = [m for m in members if not member_store.check_config(exp_dir, m, config_json, REUSABLE_CHANGES)]
  sharding.barrier('fpclass-sweep-listed')   # every process has listed the finished members before any trains
  if len(todo) < len(members):
    tqdm.write(f'{log_prefix}{len(members) - len(todo)} of {len(members)} members finished earlier; kept')
  processes, index = jax.process_count(), jax.process_index()
  mine = todo[index::processes]
  form = axis.resolve_form(config.sweep.model_axis)
  # Each process trains its members on its own devices; one process uses the whole mesh.
  parallel = DataParallel.local() if processes > 1 else DataParallel.over()
  plans = []
  for group in (members_lib.optimizer_groups(config, mine) if mine else []):
    chunk_size, how = _chunk_size(config, train_data, group, form, shared)
    chunks = members_lib.balanced_chunks(group, chunk_size)
    tqdm.write(f'{log_prefix}{form} form, {how}')
    for c, chunk in enumerate(chunks):
      prefix = f'{log_prefix}chunk {c + 1}/{len(chunks)}: ' if len(chunks) > 1 else log_prefix
      extras = dict(form=form, plan=how, chunk=len(chunk))
      record = MemoryRecord(on_finished=lambda r, extras=extras: member_store.save(
          exp_dir, r, config_json, dict(extras, train_seconds=r.train_seconds)))
      Engine(config, train_data, chunk, record, form=form, parallel=parallel, budget=budget, shared=shared,
             stop=stop, log_prefix=prefix).run()
      plans.append(extras)
  sharding.barrier('fpclass-sweep-trained')  # every member is in the store
  return plans


def _chunk_size(config, train_data: TrainData, group: list[Member], form: str, shared) -> tuple[int, str]:
  fixed = int(config.sweep.models_per_chunk)
  if len(group) == 1:
    return 1, 'one model'
  if fixed > 0:
    return fixed, f'{fixed} models per chunk (config.sweep.models_per_chunk)'
  batch = members_lib.batch_size_for(config, len(group[0].train_index))
  steps = -(-len(group[0].train_index) // batch)
  task = build_task(config, train_data.class_names, train_data.train.labels[group[0].train_index], steps)
  eval_batch = common_batch(config.eval.batch_size, [len(m.val_index) for m in group])
  task, images = _what_trains(config, task, train_data.train.images)
  image_shape = train_data.train.images.shape[1:]
  state = jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), image_shape))
  # The plan depends on the programs' shapes alone, not on the values (a learning rate): variants share it.
  key = ('plan', repr(task.model), repr(state), images.shape, str(images.dtype), batch, eval_batch, form)
  plan = shared.get(key, lambda: memory_plan.measure_memory(task, images, batch, eval_batch, form, image_shape))
  budget = int(float(config.sweep.memory_fraction) * memory_plan.free_memory_bytes())
  return plan.chunk(form, budget), plan.describe(form, budget, len(group))


def _what_trains(config, task, images):
  """(task, images) of the first phase as the engine will train it: a frozen backbone's head on its features
  (zeros of their shape: the plan reads shapes and sizes), or the task itself on the images."""
  if config.train.feature_cache == 'off' or AugmentSettings.from_config(config.augment).randomises_input:
    return task, images
  variables = jax.eval_shape(lambda: task.init_variables(jax.random.PRNGKey(0), images.shape[1:]))
  split, _ = feature_cache.find_split(config, task, variables, images.shape[1:])
  if split is None:
    return task, images
  return feature_cache.cached_task(task, split), np.zeros((len(images), *split.feature_shape), split.feature_dtype)


def _state_shape(config, train_data: TrainData, member: Member, phase: int):
  """The train state's structure in training phase `phase` (the same for every member: class weights and
  schedules change values, not shapes), for reading a member's states back."""
  batch = members_lib.batch_size_for(config, len(member.train_index))
  task = build_task(phase_config(config, phase), train_data.class_names,
                    train_data.train.labels[member.train_index], -(-len(member.train_index) // batch))
  return jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), train_data.train.images.shape[1:]))


def run_experiment(variant: Variant, exp_dir: pathlib.Path, stop=None, shared=None) -> dict:
  """Trains every split x seed of one variant (spread over the processes of a job); checkpoints each
  split's best seed as an ordinary workdir; calibrates. `shared`: the job's `SharedWork`, so variants that
  share a frozen backbone and its input share its features (and its file, and their memory plan)."""
  config = variant.config
  start = time.perf_counter()
  decoded = pipeline.decode_source(config, mapped=True)
  train_data, members, note, budget = plan_members(decoded, config)
  class_names = decoded.class_names
  plans = train_share(config, train_data, members, exp_dir, budget, f'[{variant.name}] ', stop, shared)
  monitor = config.train.monitor
  rows, kept, stored = [], {}, {}
  for m in members:
    r, header = member_store.load(exp_dir, m)
    stored[m.name] = header
    scores = sweep_report.model_scores(train_data.val.labels[m.val_index], r.val_logits, _head(config), class_names)
    rows.append(dict(experiment=variant.name, split=m.split, seed=m.seed, **scores, checkpoint=r.checkpoint,
                     epoch=r.epoch, epochs_trained=r.loop.epoch,
                     stop_reason=r.loop.stop_reason, n_train=len(m.train_index), n_val=len(m.val_index),
                     val_hash=_index_hash(m.val_index), kept=False))
    if members_lib.better_result(kept.get(m.split), r, monitor):
      kept[m.split] = r
  normalisation = dataclasses.asdict(Normalisation.from_config(config.data))
  num_params = None
  stores, shapes = [], {}   # the saves of every fold workdir overlap; all complete before the experiment is written
  try:
    for split, r in sorted(kept.items()):
      if r.loop.phase not in shapes:
        shapes[r.loop.phase] = _state_shape(config, train_data, r.member, r.loop.phase)
      r, _ = member_store.load(exp_dir, r.member, shapes[r.loop.phase])
      member_config = apply_changes(config, {'data.fold': split, 'seed': r.member.seed}, 'sweep')
      stores.append(save_member_workdir(exp_dir / members_lib.split_name(split), member_config, class_names, r,
                                        normalisation))
      if jax.process_count() > 1:   # orbax names its cross-process barriers by step: one save at a time there
        stores.pop().close()
      num_params = optim.count_params(r.last.params)
      for row in rows:
        if row['split'] == split and row['seed'] == r.member.seed:
          row['kept'] = True
  finally:
    for store in stores:
      store.close()
  calib = calibrate(config, exp_dir, decoded, {members_lib.split_name(split): r.val_logits
                                               for split, r in kept.items()})
  headers = list(stored.values())
  train_seconds = sum(h['train_seconds'] for h in headers)
  model_epochs = sum(int(r['epochs_trained']) for r in rows)
  ratio = float(np.mean([len(m.val_index) / len(m.train_index) for m in members])) \
      if len({m.split for m in members}) > 1 else 0.0
  result = dict(config=checkpoint.config_as_json(config), name=variant.name, changes=variant.changes,
                task='multilabel' if _head(config) == 'multilabel' else 'single_label', rows=rows,
                split_note=note, test_train_ratio=ratio, num_params=num_params, calibration=calib,
                timing=dict(wall_seconds=time.perf_counter() - start, train_seconds=train_seconds,
                            model_epochs=model_epochs,
                            seconds_per_model_epoch=train_seconds / max(1, model_epochs),
                            form=headers[0]['form'], chunks=[p['chunk'] for p in plans] or
                            sorted({h['chunk'] for h in headers}), plan=headers[0]['plan'],
                            processes=jax.process_count()))
  fileio.write_json(exp_dir / EXPERIMENT_FILE, result)
  sharding.barrier('fpclass-sweep-written')   # no process reads the member store any more
  if fileio.is_primary():
    member_store.remove(exp_dir)
  return result


def save_member_workdir(workdir, member_config, class_names, result: MemberResult,
                        normalisation) -> checkpoint.CheckpointStore:
  """Writes a trained member as an ordinary fpclass workdir (metadata.json, metrics.csv, `last` and
  `best` checkpoints), so --mode evaluate/submit/train(resume) work on it as on a solo run. Returns the
  store, whose saves complete when it is closed."""
  last = result.last
  workdir.mkdir(parents=True, exist_ok=True)
  checkpoint.write_metadata(workdir, checkpoint.build_metadata(
      member_config, class_names, optim.count_params(last.params), normalisation))
  fileio.write_csv(workdir / 'metrics.csv', pd.DataFrame(result.loop.history))
  store = checkpoint.CheckpointStore(workdir, writer=True)
  try:
    if result.best is not None:
      params, batch_stats = result.best   # as evaluated: no average beside them
      store.save('best', int(result.loop.best_epoch), last.replace(params=params, batch_stats=batch_stats, ema=None),
                 result.loop.to_json())
    store.save('last', int(result.loop.epoch), last, result.loop.to_json())
  except BaseException:
    store.close(after_error=True)
    raise
  return store


def _head(config):
  return head_of(config)


def run_sweep(config, workdir) -> pd.DataFrame:
  workdir = pathlib.Path(workdir)
  variants = build_variants(config)
  check_sweep_config(config, variants)
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  # Every stored variant is checked before any training, so a mismatch fails in seconds, not hours.
  stored = {v.name: _finished(workdir / v.name, checkpoint.config_as_json(v.config)) for v in variants}
  experiments, shared = [], SharedWork()
  for variant in variants:
    exp_dir = workdir / variant.name
    if stored[variant.name] is not None:
      tqdm.write(f'[{variant.name}] finished earlier; reusing {exp_dir / EXPERIMENT_FILE}')
      experiments.append(stored[variant.name])
      continue
    tqdm.write(f'[{variant.name}] {variant.describe()}')
    with StopOnSignals() as stop:
      experiments.append(run_experiment(variant, exp_dir, stop, shared))
  baseline = config.sweep.baseline or variants[0].name
  models = pd.DataFrame([row for e in experiments for row in e['rows']])
  summary = sweep_report.summarise(experiments)
  differences = sweep_report.paired_differences(models, experiments, baseline)
  fileio.write_csv(workdir / 'sweep_models.csv', models)
  fileio.write_csv(workdir / 'sweep_results.csv', summary)
  fileio.write_csv(workdir / 'sweep_differences.csv', differences)
  fileio.save_figure(workdir / 'sweep_results.png',
                     sweep_report.plot_results(summary, models, sweep_report.metrics_of(experiments)))
  wall = time.perf_counter() - start
  section = sweep_report.sweep_section(config, experiments, summary, differences, baseline, wall)
  fileio.write_text(workdir / 'sweep_results.md', section + '\n')
  report.write_section(workdir, '50-sweep', section)
  print(sweep_report.results_table(summary, sweep_report.metrics_of(experiments)))
  print(f'{workdir}: {len(models)} models in {len(experiments)} variants, {wall:.0f}s')
  return summary
