"""What a plan keeps of its trained members, beside the epoch loop (`fpclass.train.loop`).

An experiment (a sweep's variant) scores every member, keeps each split's best seed as an ordinary workdir
(`<variant>/fold<k>/`), writes `oof_predictions.csv` and `experiment.json`, and logs each member as a nested
tracked run (`finish`).
"""
import dataclasses
import hashlib
import pathlib

import jax
import numpy as np
import pandas as pd

from fpclass import fileio
from fpclass.analysis import metrics
from fpclass.config.run import RunSettings
from fpclass.models.heads import head_of
from fpclass.runtime import sharding, tracking
from fpclass.train import checkpoint, oof, optim, sidecar
from fpclass.train import members as members_lib
from fpclass.train.axis import TrainData
from fpclass.train.members import MemberResult
from fpclass.train.plan import EXPERIMENT_FILE, Variant
from fpclass.train.task import Normalisation, build_task


@dataclasses.dataclass
class VariantRun:
  """What a variant of a plan left: its folder, data, every member's result (without its states), each split's
  kept result, and for an experiment its record (experiment.json). `data` is None, and the results empty, for
  a variant finished in an earlier launch."""
  variant: Variant
  folder: pathlib.Path
  data: object | None   # fpclass.train.plan_data.VariantData
  results: list
  kept: dict = dataclasses.field(default_factory=dict)
  experiment: dict | None = None
  error: str = ''       # why an isolated variant failed (`run_plan(..., isolate=True)`)

  @property
  def kept_logits(self) -> dict:
    """{fold workdir name: validation logits} of each split's kept seed (an experiment's calibration input)."""
    return {members_lib.split_name(split): r.val_logits for split, r in self.kept.items()}


# ------------------------------------------------------------------------------------------ an experiment

def finish(variant: Variant, folder: pathlib.Path, data, records,
           chunk_plans: list, wall_seconds: float, compile_seconds: float = 0.0,
           cut_members: tuple = ()) -> VariantRun:
  """Scores every member of `data` (`fpclass.train.plan_data.VariantData`) that `records`
  (`fpclass.train.resume.FinishedMembers`) holds, keeps each split's best seed as a fold workdir, writes the
  out-of-fold predictions and experiment.json (every process reads the member store; process 0 removes it
  afterwards). `compile_seconds`: what of `wall_seconds` went to compiling or loading programs. `cut_members`:
  the members the deadline cut, left out of `data` (`fpclass.train.loop.finish_ended`), named in the record."""
  run, train_data = variant.settings, data.train_data
  monitor = run.train.monitor
  head = head_of(variant.settings)
  rows, kept, headers, results = [], {}, [], []
  for m in data.members:
    r, header = records.load(m)
    headers.append(header)
    results.append(r)
    scores = metrics.model_scores(train_data.val.labels[m.val_index], r.val_logits, head)
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
  record = dict(
      config=sidecar.config_as_json(variant.config), name=variant.name, changes=variant.changes,
      task='multilabel' if head == 'multilabel' else 'single_label', rows=rows, split_note=data.note,
      test_train_ratio=ratio, num_params=num_params,
      timing=dict(wall_seconds=wall_seconds, compile_seconds=compile_seconds, train_seconds=train_seconds,
                  model_epochs=model_epochs,
                  seconds_per_model_epoch=train_seconds / max(1, model_epochs), form=headers[0]['form'],
                  chunks=[p['chunk'] for p in chunk_plans] or sorted({h['chunk'] for h in headers}),
                  plan=headers[0]['plan'], processes=jax.process_count()))
  if cut_members:
    record['cut_members'] = sorted(cut_members)
  fileio.write_json(folder / EXPERIMENT_FILE, record)
  sharding.barrier('fpclass-sweep-written')   # no process reads the member store any more
  if fileio.is_primary():
    records.remove()
  return VariantRun(variant, folder, data, results, kept, record)


def _index_hash(index) -> str:
  return hashlib.sha1(np.asarray(index, np.int64).tobytes()).hexdigest()[:12]


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


def _save_kept(variant: Variant, folder, data, records, kept: dict, rows: list) -> int | None:
  """Writes each split's kept member as an ordinary workdir; returns the parameter count."""
  run, train_data = variant.settings, data.train_data
  normalisation = dataclasses.asdict(Normalisation.from_settings(run.data.inputs, run.data.decode.channels))
  num_params, stores, shapes = None, [], {}   # the saves overlap; all complete before the experiment is written
  try:
    for split, r in sorted(kept.items()):
      if r.loop.phase not in shapes:
        shapes[r.loop.phase] = _state_shape(run, train_data, r.member, r.loop.phase)
      r, _ = records.load(r.member, shapes[r.loop.phase])
      member = variant.member(split, r.member.seed, 'sweep')
      stores.append(save_member_workdir(folder / members_lib.split_name(split), member,
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


def save_member_workdir(workdir, member: Variant, class_names, result: MemberResult,
                        normalisation) -> checkpoint.CheckpointStore:
  """Writes a trained member as an ordinary fpclass workdir (metadata.json, metrics.csv, `last` and
  `best` checkpoints), so --mode evaluate/submit/train(resume) work on it as on a solo run. Returns the
  store, whose saves complete when it is closed."""
  last = result.last
  workdir.mkdir(parents=True, exist_ok=True)
  sidecar.write_metadata(workdir, sidecar.build_metadata(
      member.config, member.settings, class_names, optim.count_params(last.params), normalisation))
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


def _state_shape(run: RunSettings, train_data: TrainData, member, phase: int):
  """The train state's structure in training phase `phase` (the same for every member: class weights and
  schedules change values, not shapes), for reading a member's states back."""
  batch = members_lib.batch_size_for(run.train, len(member.train_index))
  task = build_task(run.phase(phase), train_data.class_names, train_data.train.labels[member.train_index],
                    -(-len(member.train_index) // batch))
  return jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), train_data.train.images.shape[1:]))
