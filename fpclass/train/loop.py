"""A plan's members through their epochs: fpclass's one training loop, to be read top to bottom.

`run_plan(plan, workdir)` runs any plan (`fpclass.train.plan`): `--mode train`'s one member, a sweep's variants x
folds x seeds, a search's trials, a refit. For each variant it loads the data the members index (`plan_data`),
opens the record that keeps them and says where each starts (`resume`), and trains the members, chunk by chunk,
through `train_members`, the epoch loop. An experiment's bookkeeping afterwards (scores, each split's kept seed,
fold workdirs, experiment.json) is `fpclass.train.experiment`'s.

`train_members` is the loop itself, in the manner of flax's `train_and_evaluate`:
  set-up    each member's first state, or where an earlier launch left it; its phase's model axis (`cohort`)
  an epoch  every alive member one epoch, phase by phase (`axis.run_epoch`), validated (`axis.val_logits`),
            one metrics row each (`loop_state`), kept by the record (`records`), logged
  the end   a member ends at its epochs or by early stopping; a signal or a deadline stops the run between
            epochs (a solo run inside one, saved to continue from the next step)
"""
import contextlib
import dataclasses
import pathlib
import signal
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from fpclass.analysis import metrics
from fpclass.data import curation, pipeline
from fpclass.errors import RunInterrupted
from fpclass.models.heads import head_of
from fpclass.runtime import sharding, timings
from fpclass.runtime.sharding import DataParallel
from fpclass.train import axis, experiment, member_store, memory_plan, oof
from fpclass.train import members as members_lib
from fpclass.train.cohort import Cohort
from fpclass.train.experiment import VariantRun
from fpclass.train.loop_state import LoopState, SelectionRules, epoch_row, phase_end, shown_total, total_epochs
from fpclass.train.members import MemberResult
from fpclass.train.plan import EXPERIMENT_FILE, Plan, Variant
from fpclass.train.plan_data import VariantData, experiment_data, solo_data
from fpclass.train.records import Start, StopOnSignals
from fpclass.train.resume import FinishedMembers, WorkdirEpochs, finished_variant
from fpclass.train.sampling import epoch_key
from fpclass.train.shared_work import SharedWork

__all__ = ['run_plan', 'train_members', 'VariantRun']


def run_plan(plan: Plan, workdir, shared: SharedWork | None = None, stop: StopOnSignals | None = None,
             isolate: bool = False, keep_ended: bool = False, keep_cut_from: int = 0) -> list[VariantRun]:
  """Trains every variant of `plan` into `workdir` (resuming what an earlier launch left); returns their runs.
  `shared`: the job's `SharedWork`, so variants that share a frozen backbone and its input share its features.
  `stop`: a `StopOnSignals` to obey (one with a deadline, say); by default each variant watches the signals.
  `isolate` (a search's round): a variant that raises is that variant's `error` and the plan goes
  on, and a deadline ends the plan between or inside variants with the runs that finished (a signal still
  raises RunInterrupted); with `keep_ended`, the variant the deadline cut is finished on its members that had
  ended (`finish_ended`), where any had, and with `keep_cut_from` also on those it cut after at least that many
  epochs, at their selected checkpoint."""
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
    if isolate and stop is not None and stop.deadline_passed:
      break
    if not plan.solo:
      tqdm.write(f'[{variant.name}] {variant.describe()}')
    with (contextlib.nullcontext(stop) if stop is not None else StopOnSignals()) as watch:
      try:
        runs.append(_run_variant(plan, variant, folder, watch, shared))
      except RunInterrupted:
        if not (isolate and watch.deadline_passed):
          raise
        ended = finish_ended(plan, variant, folder, keep_cut_from) if keep_ended or keep_cut_from else None
        runs += [ended] if ended is not None else []
        break   # the deadline: else its finished members stay on disk for a relaunch
      except Exception as e:  # noqa: BLE001 -- isolated: out of memory or any raise is this variant's failure
        if not isolate:
          raise
        runs.append(VariantRun(variant, folder, None, [], error=f'{type(e).__name__}: {" ".join(str(e).split())[:300]}'))
        tqdm.write(f'[{variant.name}] failed: {runs[-1].error}')
  return runs


def finish_ended(plan: Plan, variant: Variant, folder: pathlib.Path, keep_cut_from: int = 0) -> VariantRun | None:
  """A variant of a plan's experiment that the deadline cut, finished (`experiment.finish`) on the members that had
  ended, by early stopping or at their epochs: a run of fewer folds, its record saying which members the deadline
  cut (`cut_members`). None when no member had ended. Its member store goes: a relaunch reuses it as finished.
  A search's first model is the use (`fpclass.auto.brackets`): three of five folds that ended are a model, where
  the folds dropped left only the set-up measurement's one fold at two epochs (an H200, 2026-11-28).
  `keep_cut_from` (> 0, in a plan that keeps epochs): a member the deadline cut after at least that many epochs
  ends there, at the checkpoint the config selects among them (`member_store.finish_running`; stop reason
  'deadline'), as an early-stopped one would: the final stage's last piece, priced at the share of its epochs
  early stopping left the choice's models, was cut 3.9 s before its end and dropped whole (2026-11-29)."""
  run = variant.settings
  data = experiment_data(run.data, plan.folds, plan.seeds, run.semi)
  records = FinishedMembers(folder, variant, plan.keep_epochs)
  stopped = 0
  if keep_cut_from > 0 and plan.keep_epochs:
    if sharding.is_primary_process():   # one writer; every process then reads the store
      stopped = sum(member_store.finish_running(folder, member, run.train.select_checkpoint, keep_cut_from)
                    for member in records.todo(list(data.members)))
    sharding.barrier('fpclass-cut-members-finished')
  pending = {m.name for m in records.todo(list(data.members))}
  ended = [m for m in data.members if m.name not in pending]
  if not ended:
    records.close()
    return None
  tqdm.write(f'[{variant.name}] the deadline cut it: finished on the {len(ended)} of its {len(data.members)} '
             'models that had ended' + (f' ({stopped} of them at the epoch the deadline stopped)' if stopped else ''))
  return experiment.finish(variant, folder, dataclasses.replace(data, members=ended), records, [], 0.0,
                           cut_members=tuple(pending))


def _run_variant(plan: Plan, variant: Variant, folder: pathlib.Path, stop, shared: SharedWork) -> VariantRun:
  """One variant: its data, its record, its members trained chunk by chunk, then what the plan keeps of them."""
  run, start, compiled = variant.settings, time.perf_counter(), timings.compile_seconds()
  folder.mkdir(parents=True, exist_ok=True)
  with timings.phase('data'):
    data = (solo_data(run.data, run.seed, run.semi) if plan.solo else
            experiment_data(run.data, plan.folds, plan.seeds, run.semi))
    teacher = plan.teacher
    if teacher is not None:   # distillation: maybe unlabelled images beside the labelled ones, cross-fitted rows
      data, teacher = teacher.training_data(data)
    if plan.solo:
      pipeline.write_quarantine_report(folder / 'quarantine.csv', data.dataset.quarantine)
    # curation.csv: what config.data.exclude_csv / relabel_csv changed in the data this variant trains on.
    curation.write_record(folder, (data.dataset if data.dataset is not None else data.decoded).curation)
  records = WorkdirEpochs(folder, variant) if plan.solo else FinishedMembers(folder, variant, plan.keep_epochs)
  try:
    chunk_plans, results = _train_chunks(variant, data, records, stop, shared, teacher)
  except BaseException:
    records.close(after_error=True)
    raise
  with timings.phase('checkpoints'):
    records.close()
  if not plan.solo:
    return experiment.finish(variant, folder, data, records, chunk_plans, time.perf_counter() - start,
                             timings.compile_seconds() - compiled)
  if results and results[0].val_logits is None and not (folder / oof.FILE).exists():
    # Finished in an earlier launch that stopped before writing its predictions: the selected checkpoint's.
    logits = records.selected_logits(records.cohort, data.train_data.val.images)
    results = [dataclasses.replace(results[0], val_logits=logits)]
  oof.write(folder, data, results, head_of(variant.settings))
  return VariantRun(variant, folder, data, results, {r.member.split: r for r in results})


def _train_chunks(variant: Variant, data: VariantData, records, stop, shared, teacher=None) -> tuple[list, list]:
  """Trains the members `records` does not hold finished (with several processes: an experiment's members
  spread over them, a solo member trained by all together), grouped by optimizer and chunked by memory; returns
  the plan of each chunk and the results of the members this process trained."""
  run = variant.settings
  todo = records.todo(data.members)
  spread = records.keeps_finished_members
  if spread:
    sharding.barrier('fpclass-sweep-listed')   # every process has listed the finished members before any trains
    if len(todo) < len(data.members):
      tqdm.write(f'[{variant.name}] {len(data.members) - len(todo)} of {len(data.members)} members finished '
                 'earlier; kept')
  processes, index = jax.process_count(), jax.process_index()
  mine = todo[index::processes] if spread else todo
  form = axis.resolve_form(run.sweep.model_axis) if spread else 'loop'
  # An experiment's process trains its members on its own devices; one process (or a solo member) the whole mesh.
  parallel = DataParallel.local() if spread and processes > 1 else DataParallel.over()
  prefix = f'[{variant.name}] ' if spread else ''
  chunk_plans, results = [], []
  groups = members_lib.optimizer_groups(run.train, mine) if len(mine) > 1 else [mine] if mine else []
  for group in groups:
    chunk_size, how = memory_plan.chunk_size(run, data.train_data, group, form, shared)
    chunks = members_lib.balanced_chunks(group, chunk_size)
    if spread:
      tqdm.write(f'{prefix}{form} form, {how}')
    for c, chunk in enumerate(chunks):
      extras = dict(form=form, plan=how, chunk=len(chunk))
      cohort = Cohort(run, data.train_data, chunk, form=form, parallel=parallel, budget=data.budget, shared=shared,
                      teacher=teacher,
                      log_prefix=f'{prefix}chunk {c + 1}/{len(chunks)}: ' if len(chunks) > 1 else prefix)
      record = records.record(extras)
      with timings.phase('model'):
        starts = records.starts(cohort, record)
        records.begin(cohort, starts, data.train_data.class_names)
      results += train_members(cohort, record, starts, stop)
      chunk_plans.append(extras)
  if spread:
    sharding.barrier('fpclass-sweep-trained')  # every member is in the store
  return chunk_plans, results


# ----------------------------------------------------------------------------------------------- the epochs

def train_members(cohort: Cohort, record, starts: list[Start | None] | None = None,
                  stop: StopOnSignals | None = None) -> list[MemberResult]:
  """Trains every member of `cohort` to its end, each exactly as it would train alone, keeping each epoch in
  `record` (`fpclass.train.records`); `starts` resumes members (None: fresh). Each result holds host copies of its
  last state and best variables when the record keeps them (`keeps_states`)."""
  members, train = cohort.members, cohort.run.train
  rules = SelectionRules.of(train)
  one = len(members) == 1                          # steps inside an epoch: its bar, its stop, its resumed step
  summary = not one or bool(cohort.log_prefix)     # a sweep's chunk logs one line per epoch

  # -------------------------------------------------------------------------- set-up: where each member starts
  starts = starts or [None] * len(members)
  with timings.phase('model'):
    fresh = iter(cohort.initial_states()) if any(s is None for s in starts) else iter(())
    loops = [s.loop if s else LoopState() for s in starts]
    partials = {m: s.partial for m, s in enumerate(starts) if s and s.partial}
    states = [s.state if s else next(fresh) for s in starts]
  # the validation logits of each member's last and best epochs (a resumed member's, where its record kept them)
  kept_logits = [{'last': None, 'best': None, **((s.logits or {}) if s else {})} for s in starts]
  seconds_of = [0.0] * len(members)
  results = {}

  def result(m: int) -> MemberResult:
    loop = loops[m]
    checkpoint, epoch = loop.selected(train.select_checkpoint)
    logits = kept_logits[m][checkpoint]
    last = best = None
    if record.keeps_states:
      last, best = jax.device_get(cohort.axes[loop.phase].state(m)), record.best(m)
    return MemberResult(members[m], loop, checkpoint, epoch, None if logits is None else np.asarray(logits), last,
                        best, seconds_of[m])

  by_phase = {}
  for m, state in enumerate(states):
    if loops[m].finished:
      continue
    if loops[m].phase_over:
      cohort.enter_finetuning(m, loops[m], state, record)
    else:
      by_phase.setdefault(loops[m].phase, {})[m] = state
  for phase, group in sorted(by_phase.items()):
    with timings.phase('epochs'):   # the one-time feature pass counts with the epochs
      cohort.open_phase(phase, group)
  del states

  # -------------------------------------------------------------------------- the epochs
  while True:
    for m in _alive(loops):
      if loops[m].phase_over:   # its first phase ended last epoch: it fine-tunes from here
        cohort.enter_finetuning(m, loops[m], cohort.axes[0].remove(m), record)
    alive = _alive(loops)
    if not alive:
      break
    with timings.phase('epochs'):   # the checkpoint saves inside it count as 'checkpoints'
      start = time.perf_counter() - cohort.setup_seconds
      cohort.setup_seconds = 0.0
      epochs = {m: loops[m].epoch for m in alive}
      orders = {m: cohort.order(m, epochs[m]) for m in alive}
      keys = {m: epoch_key(members[m].seed, epochs[m]) for m in alive}
      done_before = {m: [{k: np.float32(v) for k, v in s.items()} for s in p.step_metrics]
                     for m, p in partials.items()}
      first_step = partials[alive[0]].step if one and alive[0] in partials else 0
      partials = {}
      # One process alone may stop mid-epoch; several must agree, which they do at the epoch's end.
      mid_epoch = (stop.requested if stop is not None and one and sharding.process_count() == 1
                   and record.stops_mid_epoch else None)

      # 1. train: each phase's members one epoch on their model axis; 2. validate them
      step_metrics, val_logits = {}, {}
      for phase in sorted({loops[m].phase for m in alive}):
        in_phase = [m for m in alive if loops[m].phase == phase]
        model_axis = cohort.axes[phase]
        bar, on_step = _step_progress(train, record, loops[in_phase[0]], epochs[in_phase[0]],
                                      len(orders[in_phase[0]]), one)
        step_metrics.update(model_axis.run_epoch(in_phase, orders, keys, on_step, first_step, mid_epoch))
        if bar is not None:
          bar.close()
        for m in in_phase:
          step_metrics[m] = done_before.get(m, []) + step_metrics[m]
          if len(step_metrics[m]) < len(orders[m]):   # a stop inside the epoch: saved, and the run ends here
            record.interrupt(m, epochs[m] + 1, model_axis.state(m), loops[m], step_metrics[m], len(orders[m]),
                             stop)
        if train.bn_statistics == 'precise':   # what validation and the checkpoints read (fpclass.train.precise_bn)
          model_axis.recompute_batch_stats(in_phase, {m: members[m].train_index for m in in_phase},
                                           cohort.run.eval.batch_size)
        val_logits.update(model_axis.val_logits(in_phase, cohort.validation_batch))
      seconds = time.perf_counter() - start

      # 3. one metrics row per member: improved? stopped? kept by the record
      rows = {}
      for m in alive:
        loop, member = loops[m], members[m]
        totals = {k: float(sum(np.asarray(s[k]) for s in step_metrics[m])) for k in step_metrics[m][0]}
        val = metrics.model_scores(cohort.data.val.labels[member.val_index], val_logits[m], cohort.task(0).head)
        row = epoch_row(epochs[m] + 1, totals, val, cohort.learning_rate(m, loop.phase), loop.phase, seconds)
        last_phase = loop.phase == 1 or train.finetune_epochs == 0
        improved, stopped_early = loop.record(row, rules, phase_end(loop, train), last_phase)
        kept_logits[m]['last'] = val_logits[m]
        if improved:
          kept_logits[m]['best'] = val_logits[m]
        with timings.phase('checkpoints'):
          record.epoch_end(m, epochs[m] + 1, cohort.axes[loop.phase].state(m), loop, improved, kept_logits[m])
        rows[m] = (row, improved, stopped_early)

    # 4. log the epoch; hand over the members that finished; stop between epochs when asked to
    for m in alive:   # each member's share of the epoch's time
      seconds_of[m] += seconds / len(alive)
    if not summary:
      _log_solo_epoch(train, rules, loops[alive[0]], epochs[alive[0]], rows[alive[0]])
    else:
      _log_chunk_epoch(train, rules.monitor, [members[m].name for m in alive], [rows[m] for m in alive],
                       max(epochs.values()), seconds, cohort.log_prefix)
    for m in alive:
      if loops[m].finished:
        results[m] = result(m)
        record.finished(results[m])
    _stop_if_asked(stop, cohort, record, [loops[m] for m in alive], max(epochs.values()) + 1)

  return [results[m] if m in results else result(m) for m in range(len(members))]


def _alive(loops: list[LoopState]) -> list[int]:
  return [m for m, loop in enumerate(loops) if not loop.finished]


def _stop_if_asked(stop, cohort: Cohort, record, loops: list[LoopState], epoch: int) -> None:
  """Ends the run after this epoch when a signal (or a deadline) asked for it; with several processes training
  one model together, process 0's signal decides for all."""
  if stop is None or all(loop.finished for loop in loops):
    return
  requested = stop.requested()
  if not cohort.parallel.process_local:
    requested = sharding.agree_on(requested)
  if requested:
    raise RunInterrupted(f'{stop.name}: stopped after epoch {epoch}; {record.kept_on_stop} Launch the '
                         'same command again to resume.', stop.signum or signal.SIGTERM)


# ------------------------------------------------------------------------------------------ what it prints

def _step_progress(train, record, loop: LoopState, epoch: int, steps: int, solo: bool):
  """(bar, on_step): a progress bar over the steps of a solo run's epoch, with the running loss and accuracy
  every train.log_every_steps (reading them waits for the device); the record polls its saves."""
  if not solo:
    return None, lambda done, step_metrics: record.poll()
  bar = tqdm(total=steps, desc=f'epoch {epoch + 1}/{shown_total(loop, train)}', unit='step', leave=False,
             disable=None)
  log_every = max(1, int(train.log_every_steps))

  def on_step(done, step_metrics):
    record.poll()
    bar.update(done - bar.n)
    if done % log_every == 0 or done == steps:
      host = jax.device_get(step_metrics)
      bar.set_postfix(loss=f'{sum(s["loss_sum"] for s in host) / sum(s["count"] for s in host):.4f}',
                      acc=f'{sum(s["correct"] for s in host) / sum(s["count"] for s in host):.3f}')
  return bar, on_step


def _log_solo_epoch(train, rules, loop: LoopState, epoch: int, recorded: tuple) -> None:
  row, improved, stopped_early = recorded
  tqdm.write(f'epoch {epoch + 1}/{shown_total(loop, train)}: loss {row["train_loss"]:.4f} acc '
             f'{row["train_accuracy"]:.3f} | val loss {row["val_loss"]:.4f} acc {row["val_accuracy"]:.3f} f1 '
             f'{row["val_macro_f1"]:.3f}{" *" if improved else ""} ({row["seconds"]:.1f}s)')
  if stopped_early:
    tqdm.write(f'early stopping: no {rules.monitor} improvement for {rules.patience} epochs; best epoch '
               f'{loop.best_epoch}')


def _log_chunk_epoch(train, monitor: str, names: list, recorded: list, epoch: int, seconds: float,
                     prefix: str) -> None:
  values = [row[monitor] for row, _, _ in recorded]
  mean = np.nanmean([np.nan if v is None else v for v in values])
  stopped = [name for name, (_, _, stopped_early) in zip(names, recorded) if stopped_early]
  models = f'{len(names)} model' + ('s' if len(names) > 1 else '')
  tqdm.write(f'{prefix}epoch {epoch + 1}/{total_epochs(train)}: {models}, {seconds:.1f}s, mean {monitor} '
             f'{mean:.4f}' + (f'; early stopped: {", ".join(stopped)}' if stopped else ''))

