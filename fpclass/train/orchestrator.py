"""`run_plan(plan, workdir)`: the one orchestrator. Any plan (`fpclass.train.plan`) runs here: `--mode train`'s
single member, a sweep's variants x folds x seeds, a search trial, a refit.

For each variant: its data (`plan_data`), the record its members are kept in and where each starts
(`resume`, the one resume path), then its members trained by the engine (`engine`), grouped by optimizer and
chunked by memory (`memory_plan`), spread over the processes of a job when the plan keeps finished members.
An experiment then keeps each split's best seed as an ordinary workdir (`<variant>/fold<k>/`) and writes
experiment.json; its out-of-fold predictions go to `<variant>/oof_predictions.csv`.
"""
import contextlib
import dataclasses
import hashlib
import pathlib
import time

import jax
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fpclass import fileio
from fpclass.analysis import sweep_report
from fpclass.config.inputs import AugmentSettings, DataSettings
from fpclass.config.training import EvalSettings, SweepSettings, TrainSettings
from fpclass.data import curation, pipeline
from fpclass.models.heads import head_of
from fpclass.runtime import sharding, timings, tracking
from fpclass.runtime.sharding import DataParallel
from fpclass.train import axis, checkpoint, feature_cache, memory_plan, oof, optim, sidecar
from fpclass.train import members as members_lib
from fpclass.train.engine import Engine, TrainData, phase_config
from fpclass.train.members import MemberResult
from fpclass.train.plan import MEMBER_WORKDIRS, SOLO, Plan, Variant, apply_changes
from fpclass.train.plan_data import VariantData, experiment_data, solo_data
from fpclass.train.records import StopOnSignals
from fpclass.train.resume import EXPERIMENT_FILE, FinishedMembers, WorkdirEpochs, finished_variant
from fpclass.train.shared_work import SharedWork
from fpclass.train.task import Normalisation, build_task, common_batch


@dataclasses.dataclass
class VariantRun:
  """What a variant of a plan left: its folder, data, every member's result (without its states), each split's
  kept result, and for an experiment its record (experiment.json). `data` is None, and the results empty, for
  a variant finished in an earlier launch."""
  variant: Variant
  folder: pathlib.Path
  data: VariantData | None
  results: list
  kept: dict = dataclasses.field(default_factory=dict)
  experiment: dict | None = None

  @property
  def kept_logits(self) -> dict:
    """{fold workdir name: validation logits} of each split's kept seed (an experiment's calibration input)."""
    return {members_lib.split_name(split): r.val_logits for split, r in self.kept.items()}


@dataclasses.dataclass
class MemberRun:
  """A finished member of a MEMBER_WORKDIRS plan: its workdir, its out-of-fold predictions and the seconds
  it took in this launch (0 when it had finished before)."""
  variant: str
  split: int
  seed: int
  folder: pathlib.Path
  predictions: pd.DataFrame
  seconds: float


def run_plan(plan: Plan, workdir, shared: SharedWork | None = None, stop: StopOnSignals | None = None,
             on_member=None) -> list[VariantRun]:
  """Trains every variant of `plan` into `workdir` (resuming what an earlier launch left); returns their runs.
  `shared`: the job's `SharedWork`, so variants that share a frozen backbone and its input share its features.
  `stop`: a `StopOnSignals` to obey (one with a deadline, say); by default each variant watches the signals.
  `on_member(MemberRun)`: called as each member of a MEMBER_WORKDIRS plan finishes; what it raises ends the
  plan there."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  shared = shared if shared is not None else SharedWork()
  # Every stored variant is checked before any training, so a mismatch fails in seconds, not hours.
  stored = {} if plan.solo else {v.name: finished_variant(workdir / v.name, v.config) for v in plan.variants}
  runs = []
  for variant in plan.variants:
    folder = workdir if plan.solo else workdir / variant.name
    if stored.get(variant.name) is not None:
      tqdm.write(f'[{variant.name}] finished earlier; reusing {folder / EXPERIMENT_FILE}')
      runs.append(VariantRun(variant, folder, None, [], experiment=stored[variant.name]))
      continue
    if not plan.solo:
      tqdm.write(f'[{variant.name}] {variant.describe()}')
    with (contextlib.nullcontext(stop) if stop is not None else StopOnSignals()) as watch:
      if plan.layout == MEMBER_WORKDIRS:
        runs.append(_run_member_workdirs(plan, variant, folder, watch, shared, on_member))
      else:
        runs.append(_run_variant(plan, variant, folder, watch, shared))
  return runs


def plan_splits(config, folds) -> tuple[int, ...]:
  """The splits a plan's `folds` name for `config`: every fold when (), or -1 alone when the source has its
  own validation split."""
  data = DataSettings.from_config(config.data)
  if pipeline.list_source(data).val is not None:
    return (-1,)
  return tuple(folds) or tuple(range(data.split.num_folds))


def _run_member_workdirs(plan: Plan, variant: Variant, folder: pathlib.Path, stop, shared,
                         on_member) -> VariantRun:
  """Each member as a solo run in its own workdir, one after another; the variant's out-of-fold predictions
  gathered from theirs."""
  frames, results = [], []
  for split in plan_splits(variant.config, plan.folds):
    for seed in plan.seeds:
      config = apply_changes(variant.config, {'data.fold': split, 'seed': seed}, f'{variant.name} member')
      member_folder = folder / f'{members_lib.split_name(split)}-seed{seed}'
      start = time.perf_counter()
      solo = Plan((Variant(variant.name, variant.changes, config),), SOLO, (split,), (seed,))
      run = _run_variant(solo, solo.variants[0], member_folder, stop, shared)
      results += run.results
      predictions = oof.read(member_folder)
      frames.append(predictions)
      if on_member is not None:
        on_member(MemberRun(variant.name, split, seed, member_folder, predictions, time.perf_counter() - start))
  fileio.write_csv(folder / oof.FILE, pd.concat(frames, ignore_index=True))
  return VariantRun(variant, folder, None, results)


def _run_variant(plan: Plan, variant: Variant, folder: pathlib.Path, stop, shared: SharedWork) -> VariantRun:
  config, start = variant.config, time.perf_counter()
  folder.mkdir(parents=True, exist_ok=True)
  with timings.phase('data'):
    typed = DataSettings.from_config(config.data)
    data = solo_data(typed, int(config.seed)) if plan.solo else experiment_data(typed, plan.folds, plan.seeds)
    quarantine = data.dataset.quarantine if data.dataset is not None else data.decoded.quarantine
    if plan.solo:
      pipeline.write_quarantine_report(folder / 'quarantine.csv', quarantine)
    # curation.csv: what config.data.exclude_csv / relabel_csv changed in the data this variant trains on.
    curation.write_record(folder, (data.dataset if data.dataset is not None else data.decoded).curation)
  records = WorkdirEpochs(folder, config) if plan.solo else FinishedMembers(folder, config)
  try:
    chunk_plans, results = _train_members(plan, variant, data, records, stop, shared)
  except BaseException:
    records.close(after_error=True)
    raise
  with timings.phase('checkpoints'):
    records.close()
  if plan.solo:
    if results and results[0].val_logits is None and not (folder / oof.FILE).exists():
      # Finished in an earlier launch that stopped before writing its predictions: the selected checkpoint's.
      logits = records.selected_logits(records.engine, data.train_data.val.images)
      results = [dataclasses.replace(results[0], val_logits=logits)]
    oof.write(folder, data, results, head_of(config))
    return VariantRun(variant, folder, data, results, {r.member.split: r for r in results})
  return _finish_experiment(variant, folder, data, records, chunk_plans, time.perf_counter() - start)


def _train_members(plan: Plan, variant: Variant, data: VariantData, records, stop, shared) -> tuple[list, list]:
  """Trains the members `records` does not hold finished (with several processes: an experiment's members
  spread over them, a solo member trained by all together); returns the plan of each chunk and the results
  of the members this process trained."""
  config = variant.config
  todo = records.todo(data.members)
  spread = records.keeps_finished_members
  if spread:
    sharding.barrier('fpclass-sweep-listed')   # every process has listed the finished members before any trains
    if len(todo) < len(data.members):
      tqdm.write(f'[{variant.name}] {len(data.members) - len(todo)} of {len(data.members)} members finished '
                 'earlier; kept')
  processes, index = jax.process_count(), jax.process_index()
  mine = todo[index::processes] if spread else todo
  form = axis.resolve_form(SweepSettings.from_config(config.sweep).model_axis) if spread else 'loop'
  # An experiment's process trains its members on its own devices; one process (or a solo member) the whole mesh.
  parallel = DataParallel.local() if spread and processes > 1 else DataParallel.over()
  prefix = f'[{variant.name}] ' if spread else ''
  chunk_plans, results = [], []
  train = TrainSettings.from_config(config.train)
  groups = members_lib.optimizer_groups(train, mine) if len(mine) > 1 else [mine] if mine else []
  for group in groups:
    chunk_size, how = _chunk_size(config, data.train_data, group, form, shared)
    chunks = members_lib.balanced_chunks(group, chunk_size)
    if spread:
      tqdm.write(f'{prefix}{form} form, {how}')
    for c, chunk in enumerate(chunks):
      extras = dict(form=form, plan=how, chunk=len(chunk))
      engine = Engine(config, data.train_data, chunk, records.record(extras), form=form, parallel=parallel,
                      budget=data.budget, shared=shared, stop=stop,
                      log_prefix=f'{prefix}chunk {c + 1}/{len(chunks)}: ' if len(chunks) > 1 else prefix)
      with timings.phase('model'):
        starts = records.starts(engine)
        records.begin(engine, starts, data.train_data.class_names)
      results += engine.run(starts)
      chunk_plans.append(extras)
  if spread:
    sharding.barrier('fpclass-sweep-trained')  # every member is in the store
  return chunk_plans, results


def _chunk_size(config, train_data: TrainData, group: list, form: str, shared) -> tuple[int, str]:
  sweep = SweepSettings.from_config(config.sweep)
  fixed = sweep.models_per_chunk
  if len(group) == 1:
    return 1, 'one model'
  if fixed > 0:
    return fixed, f'{fixed} models per chunk (config.sweep.models_per_chunk)'
  batch = members_lib.batch_size_for(TrainSettings.from_config(config.train), len(group[0].train_index))
  steps = -(-len(group[0].train_index) // batch)
  task = build_task(config, train_data.class_names, train_data.train.labels[group[0].train_index], steps)
  eval_batch = common_batch(EvalSettings.from_config(config.eval).batch_size, [len(m.val_index) for m in group])
  task, images = _what_trains(config, task, train_data.train.images)
  image_shape = train_data.train.images.shape[1:]
  state = jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), image_shape))
  # The plan depends on the programs' shapes alone, not on the values (a learning rate): variants share it.
  key = ('plan', repr(task.model), repr(state), images.shape, str(images.dtype), batch, eval_batch, form)
  plan = shared.get(key, lambda: memory_plan.measure_memory(task, images, batch, eval_batch, form, image_shape))
  budget = int(sweep.memory_fraction * memory_plan.free_memory_bytes())
  return plan.chunk(form, budget), plan.describe(form, budget, len(group))


def _what_trains(config, task, images):
  """(task, images) of the first phase as the engine will train it: a frozen backbone's head on its features
  (zeros of their shape: the plan reads shapes and sizes), or the task itself on the images."""
  if TrainSettings.from_config(config.train).feature_cache == 'off' or \
     AugmentSettings.from_config(config.augment).randomises_input:
    return task, images
  variables = jax.eval_shape(lambda: task.init_variables(jax.random.PRNGKey(0), images.shape[1:]))
  split, _ = feature_cache.find_split(config, task, variables, images.shape[1:])
  if split is None:
    return task, images
  return feature_cache.cached_task(task, split), np.zeros((len(images), *split.feature_shape), split.feature_dtype)


def _state_shape(config, train_data: TrainData, member, phase: int):
  """The train state's structure in training phase `phase` (the same for every member: class weights and
  schedules change values, not shapes), for reading a member's states back."""
  batch = members_lib.batch_size_for(TrainSettings.from_config(config.train), len(member.train_index))
  task = build_task(phase_config(config, phase), train_data.class_names,
                    train_data.train.labels[member.train_index], -(-len(member.train_index) // batch))
  return jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), train_data.train.images.shape[1:]))


def _index_hash(index) -> str:
  return hashlib.sha1(np.asarray(index, np.int64).tobytes()).hexdigest()[:12]


def _finish_experiment(variant: Variant, folder: pathlib.Path, data: VariantData, records: FinishedMembers,
                       chunk_plans: list, wall_seconds: float) -> VariantRun:
  """Scores every member, keeps each split's best seed as a fold workdir, writes the out-of-fold predictions
  and experiment.json (every process reads the member store; process 0 removes it afterwards)."""
  config, train_data = variant.config, data.train_data
  class_names, monitor = train_data.class_names, TrainSettings.from_config(config.train).monitor
  head = head_of(config)
  rows, kept, headers, results = [], {}, [], []
  for m in data.members:
    r, header = records.load(m)
    headers.append(header)
    results.append(r)
    scores = sweep_report.model_scores(train_data.val.labels[m.val_index], r.val_logits, head, class_names)
    rows.append(dict(experiment=variant.name, split=m.split, seed=m.seed, **scores, checkpoint=r.checkpoint,
                     epoch=r.epoch, epochs_trained=r.loop.epoch, stop_reason=r.loop.stop_reason,
                     n_train=len(m.train_index), n_val=len(m.val_index), val_hash=_index_hash(m.val_index),
                     kept=False))
    if members_lib.better_result(kept.get(m.split), r, monitor):
      kept[m.split] = r
  _track_members(variant, data.members, results, rows)
  num_params = _save_kept(variant, folder, data, records, kept, rows)
  oof.write(folder, data, results, head)
  model_epochs = sum(int(r['epochs_trained']) for r in rows)
  train_seconds = sum(h['train_seconds'] for h in headers)
  members = data.members
  ratio = float(np.mean([len(m.val_index) / len(m.train_index) for m in members])) \
      if len({m.split for m in members}) > 1 else 0.0
  experiment = dict(
      config=sidecar.config_as_json(config), name=variant.name, changes=variant.changes,
      task='multilabel' if head == 'multilabel' else 'single_label', rows=rows, split_note=data.note,
      test_train_ratio=ratio, num_params=num_params,
      timing=dict(wall_seconds=wall_seconds, train_seconds=train_seconds, model_epochs=model_epochs,
                  seconds_per_model_epoch=train_seconds / max(1, model_epochs), form=headers[0]['form'],
                  chunks=[p['chunk'] for p in chunk_plans] or sorted({h['chunk'] for h in headers}),
                  plan=headers[0]['plan'], processes=jax.process_count()))
  fileio.write_json(folder / EXPERIMENT_FILE, experiment)
  sharding.barrier('fpclass-sweep-written')   # no process reads the member store any more
  if fileio.is_primary():
    records.remove()
  return VariantRun(variant, folder, data, results, kept, experiment)


def _track_members(variant: Variant, members: list, results: list, rows: list) -> None:
  """One nested run per member in the open run of the tracking sinks: its variant's changes, split and seed as
  parameters, its epochs by step (the member keeps no workdir of its own), its scores."""
  tracker = tracking.current()
  for m, r, row in zip(members, results, rows):
    params = dict(variant.changes, variant=variant.name, split=m.split, seed=m.seed)
    with tracker.nested(f'{variant.name}/{members_lib.split_name(m.split)}-seed{m.seed}', params, epochs=True):
      for epoch in range(1, len(r.loop.history) + 1):
        tracker.epoch(r.loop.history[:epoch])
      tracker.log_metrics({k: v for k, v in row.items() if k not in ('split', 'seed')})


def _save_kept(variant, folder, data: VariantData, records, kept: dict, rows: list) -> int | None:
  """Writes each split's kept member as an ordinary workdir; returns the parameter count."""
  config, train_data = variant.config, data.train_data
  data_settings = DataSettings.from_config(config.data)
  normalisation = dataclasses.asdict(Normalisation.from_settings(data_settings.inputs, data_settings.decode.channels))
  num_params, stores, shapes = None, [], {}   # the saves overlap; all complete before the experiment is written
  try:
    for split, r in sorted(kept.items()):
      if r.loop.phase not in shapes:
        shapes[r.loop.phase] = _state_shape(config, train_data, r.member, r.loop.phase)
      r, _ = records.load(r.member, shapes[r.loop.phase])
      member_config = apply_changes(config, {'data.fold': split, 'seed': r.member.seed}, 'sweep')
      stores.append(save_member_workdir(folder / members_lib.split_name(split), member_config,
                                        train_data.class_names, r, normalisation))
      if jax.process_count() > 1:   # orbax names its cross-process barriers by step: one save at a time there
        stores.pop().close()
      num_params = optim.count_params(r.last.params)
      for row in rows:
        if row['split'] == split and row['seed'] == r.member.seed:
          row['kept'] = True
  finally:
    for store in stores:
      store.close()
  return num_params


def save_member_workdir(workdir, member_config, class_names, result: MemberResult,
                        normalisation) -> checkpoint.CheckpointStore:
  """Writes a trained member as an ordinary fpclass workdir (metadata.json, metrics.csv, `last` and
  `best` checkpoints), so --mode evaluate/submit/train(resume) work on it as on a solo run. Returns the
  store, whose saves complete when it is closed."""
  last = result.last
  workdir.mkdir(parents=True, exist_ok=True)
  sidecar.write_metadata(workdir, sidecar.build_metadata(
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
