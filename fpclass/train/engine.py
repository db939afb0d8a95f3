"""The one epoch driver: M >= 1 members trained together, each exactly as it would train alone.

`--mode train` is this engine with one member, `--mode sweep` with one per split x seed of a variant, so
every training feature (pretrained weights, frozen stages, two phases, the feature cache, streaming, mixing,
samplers, class weights) exists once. A member's randomness and data depend on its seed and split alone:
its init key is fold_in(PRNGKey(seed), 0), its epoch key fold_in(fold_in(PRNGKey(seed), 1), epoch) and step
i's fold_in(epoch key, i), and its batches are `batch_order(sampler, seed, epoch, its labels, batch)` mapped
through its train indices. The members share the arrays those indices point into, and advance through one
form of the model axis (`fpclass.train.axis`) phase by phase: each member enters its fine-tuning phase when
its own first phase ends. What is kept of each epoch is the record's business (`fpclass.train.records`).
"""
import hashlib
import math
import signal
import time

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from fpclass import fileio, models
from fpclass.analysis import metrics
from fpclass.config.inputs import DataSettings
from fpclass.config.model import ModelSettings
from fpclass.config.training import EvalSettings, TrainSettings
from fpclass.data import stream
from fpclass.data.rows import take_rows
from fpclass.errors import RunInterrupted
from fpclass.models import transfer
from fpclass.runtime import sharding, timings
from fpclass.runtime.sharding import DataParallel
from fpclass.train import accumulation, feature_cache, optim, progress
from fpclass.train.axis import LoopAxis, MemberData, Split, TrainData, VmapAxis
from fpclass.train.loop_state import LoopState, SelectionRules, epoch_row
from fpclass.train.members import Member, MemberResult, batch_size_for
from fpclass.train.progress import phase_end
from fpclass.train.records import Start
from fpclass.train.sampling import batch_order
from fpclass.train.shared_work import SharedWork
from fpclass.train.steps import CompiledSteps, resolve_loop
from fpclass.train.task import build_task
from fpclass.train.task import class_weights as task_class_weights


def phase_config(config, phase: int):
  """The config of training phase `phase`. Phase 1, when config.train.finetune_epochs > 0, fine-tunes:
  model.freeze_till becomes train.finetune_freeze_till, the learning rate is scaled by
  train.finetune_lr_factor, and the schedule spans the fine-tuning epochs."""
  if phase == 0:
    return config
  train = TrainSettings.from_config(config.train)
  tuned = ml_collections.ConfigDict(config.to_dict())
  tuned.model.freeze_till = train.finetune_freeze_till
  tuned.train.learning_rate = train.learning_rate * train.finetune_lr_factor
  tuned.train.epochs = train.finetune_epochs
  tuned.train.warmup_epochs = 0
  return tuned


class Engine:
  """Trains `members` (one optimizer group: the same batch size and schedule) on `data`.

  `record` keeps each epoch (`fpclass.train.records`); `form` is the model axis ('loop' or 'vmap');
  `parallel` the mesh (default: every device of the job); `budget` the device bytes cached features may take
  (default: `fpclass.data.stream.memory_budget`); `shared` the job's `SharedWork` (features, pretrained
  arrays), shared with its other engines; `stop` a `StopOnSignals`. A solo run logs each epoch's metrics; a sweep's chunk
  (`log_prefix` given) one summary line per epoch."""

  def __init__(self, config, data: TrainData, members: list[Member], record, *, form: str = 'loop',
               parallel: DataParallel | None = None, budget: int | None = None, shared: SharedWork | None = None,
               stop=None, log_prefix: str = ''):
    self.config, self.data, self.members, self.record = config, data, members, record
    # The sections the engine reads, typed and checked once.
    self.train_settings = TrainSettings.from_config(config.train)
    self.model_settings = ModelSettings.from_config(config.model)
    self.storage = DataSettings.from_config(config.data).storage
    self.shared = shared if shared is not None else SharedWork()
    self.summary_log = len(members) > 1 or bool(log_prefix)
    self.form, self.stop, self.log_prefix = form, stop, log_prefix
    self.parallel = parallel or DataParallel.over()
    self.loop_form = resolve_loop(self.train_settings.loop)
    self.budget = budget
    self.batch = batch_size_for(self.train_settings, len(members[0].train_index))
    self.parallel.check_batch_size(self.batch)
    self.steps = [math.ceil(len(m.train_index) / self.batch) for m in members]
    self.eval_batch = EvalSettings.from_config(config.eval).batch_size
    self.rules = SelectionRules.from_config(self.train_settings)
    self.image_shape = data.train.images.shape[1:]
    self.class_weights = [task_class_weights(self.train_settings.class_weights, data.class_names,
                                             data.train.labels[m.train_index]) for m in members]
    self.loops: list[LoopState] = []
    self._tasks, self._axes, self._val_images = {}, {}, {}
    self._setup_seconds = 0.0
    self._logits = [dict(last=None, best=None) for _ in members]
    self._results, self._schedules = {}, {}
    self._seconds = [0.0] * len(members)

  # ---------------------------------------------------------------------------------------- set-up

  def task(self, phase: int):
    """The phase's task, built once for every member (a member's class weights replace the first one's)."""
    if phase not in self._tasks:
      self._tasks[phase] = build_task(phase_config(self.config, phase), self.data.class_names,
                                      self.data.train.labels[self.members[0].train_index], self.steps[0])
    return self._tasks[phase]

  def init_states(self) -> list:
    """Every member's initial state: pretrained weights read once, the rest initialised from its seed."""
    compiled = CompiledSteps(self.task(0), self.parallel, self.loop_form)
    model = self.model_settings
    shapes = self.shared.get(('variable shapes', repr(self.task(0).model), self.image_shape),
                             lambda: compiled.variable_shapes(self.image_shape))
    # The file's arrays go into the abstract variables first, so only what it lacks is initialised; read
    # once for the job (its arrays are not changed by anyone).
    key = ('pretrained', repr(sorted(model.items())), repr(shapes))
    loaded = self.shared.get(key, lambda: transfer.load_pretrained(
        models.get_spec(model.name), model, shapes, fileio.cache_root(self.storage.cache_dir)))
    states = []
    for member in self.members:
      key = jax.random.fold_in(jax.random.PRNGKey(member.seed), 0)
      states.append(compiled.init(key, self.image_shape, compiled.init_variables(key, self.image_shape, loaded)))
    return states

  def _member_val_images(self, m: int, val_images):
    """Member m's validation images: the val array itself when it validates on all of it, in order."""
    index = self.members[m].val_index
    if len(index) == len(val_images) and np.array_equal(index, np.arange(len(index))):
      return val_images
    key = (id(val_images), hashlib.sha1(np.asarray(index, np.int64).tobytes()).hexdigest())
    if key not in self._val_images:   # seeds of one fold share their fold's copy
      self._val_images[key] = take_rows(val_images, index)
    return self._val_images[key]

  def _member_data(self, m: int, train: Split, val_images) -> MemberData:
    return MemberData(train, self._member_val_images(m, val_images), self.members[m].val_index,
                      self.class_weights[m])

  def _open_phase(self, phase: int, states: dict) -> None:
    """Puts members into the phase's axis, creating it on first use; phase 0's members come together,
    so its feature cache is decided once for all of them."""
    task, datas, val_array = self.task(phase), None, self.data.val.images
    if phase == 0:   # fine-tuning unfreezes the backbone: the cache serves the first phase alone
      task, datas, val_array = self._cached_phase(task, states)
    if datas is None:
      datas = {m: self._member_data(m, self.data.train, self.data.val.images) for m in states}
    if phase not in self._axes:
      if self.form == 'vmap':
        train = next(iter(datas.values())).train
        self._axes[phase] = VmapAxis(task, len(self.members), next(iter(states.values())), train, val_array,
                                     self.class_weights)
      else:
        self._axes[phase] = LoopAxis(task, self.parallel, self.loop_form)
    for m, state in states.items():
      self._axes[phase].add(m, state, datas[m])

  def _cached_phase(self, task, states: dict):
    """(task, {m: MemberData}, val array) with the head training on features computed once per distinct
    frozen backbone, or (task, None, the val images) when the feature cache does not apply."""
    first = next(iter(states.values()))
    shared_val = self.data.val.images is self.data.train.images
    count = len(self.data.train.images) + (0 if shared_val else len(self.data.val.images))
    budget = self.budget if self.budget is not None else stream.memory_budget(self.storage.device_memory_budget)
    split = feature_cache.head_split(self.config, task, {'params': first.params, 'batch_stats': first.batch_stats},
                                     self.image_shape, count, budget)
    if split is None:
      return task, None, self.data.val.images
    digests = {m: feature_cache.backbone_digest(split, {'params': s.params, 'batch_stats': s.batch_stats})
               for m, s in states.items()}
    if self.form == 'vmap' and len(set(digests.values())) > 1:
      tqdm.write('feature cache: off (the members\' frozen backbones differ, and the vmap form shares one input)')
      return task, None, self.data.val.images
    start = time.perf_counter()
    full = CompiledSteps(task, self.parallel, self.loop_form)

    computed = []

    def compute(images, state):
      computed.append(len(images))
      return feature_cache.compute_features(full, split, state, images, self.eval_batch)

    def features_of(images, state, digest):
      key = feature_cache.pass_key(task, split, digest, images, self.eval_batch)
      return self.shared.get(key, lambda: compute(images, state))

    features = {}
    for m, digest in digests.items():
      if digest not in features:   # every member with this backbone shares the pass
        train_x = features_of(self.data.train.images, states[m], digest)
        val_x = train_x if shared_val else features_of(self.data.val.images, states[m], digest)
        features[digest] = (Split(train_x, self.data.train.labels), val_x)
    seconds = time.perf_counter() - start
    self._setup_seconds += seconds   # counted in the first epoch's seconds
    passes = f'{len(features)} passes' if len(features) > 1 else 'once'
    ran = (f'ran {passes} over {len(self.data.train.images)} train'
           f'{"" if shared_val else f" and {len(self.data.val.images)} val"} images ({seconds:.1f}s)' if computed
           else 'ran earlier in this job over the same images')
    tqdm.write(f'{self.log_prefix}feature cache: {self.train_settings.feature_cache}: the frozen network before '
               f'{split.name!r} {ran} for {len(states)} model(s); the head trains on its '
               f'{"x".join(map(str, split.feature_shape))} outputs')
    datas = {m: self._member_data(m, *features[digests[m]]) for m in states}
    return feature_cache.cached_task(task, split), datas, next(iter(features.values()))[1]

  def _enter_finetuning(self, m: int, state) -> None:
    """Member m starts phase 1 from its best weights so far when early stopping chose them (as Keras'
    restore_best_weights would), else from the current ones, with a fresh optimizer. With an average of the
    weights (config.train.ema_decay) those are the averaged ones, which phase 0 was validated with (Keras'
    fit likewise ends by writing its averages into the model), and a fresh average starts with the phase."""
    loop = self.loops[m]
    state = state.for_evaluation()
    if self.train_settings.early_stopping_patience > 0:
      best = self.record.best_variables(m, state)
      state = state if best is None else best
    loop.phase, loop.phase_start, loop.phase_over, loop.wait = 1, loop.epoch, False, 0
    if len(self.members) == 1:
      train = self.train_settings
      tqdm.write(f'fine-tuning: {train.finetune_epochs} epochs with model.freeze_till={train.finetune_freeze_till}, '
                 f'learning rate x{train.finetune_lr_factor}')
    task = self.task(1)
    state = self.parallel.replicate(task.init(None, self.image_shape, {'params': state.params,
                                                                       'batch_stats': state.batch_stats}))
    self._open_phase(1, {m: state})

  # ---------------------------------------------------------------------------------------- training

  def run(self, starts: list[Start | None] | None = None) -> list[MemberResult]:
    """Trains every member to its end; `starts` resumes members (None: fresh). Each result holds host
    copies of its last state and best variables when the record keeps them (`keeps_states`)."""
    starts = starts or [None] * len(self.members)
    with timings.phase('model'):
      fresh = iter(self.init_states()) if any(s is None for s in starts) else iter(())
      self.loops = [s.loop if s else LoopState() for s in starts]
      partials = {m: s.partial for m, s in enumerate(starts) if s and s.partial}
      states = [s.state if s else next(fresh) for s in starts]
    by_phase = {}
    for m, state in enumerate(states):
      if self.loops[m].finished:
        continue
      if self.loops[m].phase_over:
        self._enter_finetuning(m, state)
      else:
        by_phase.setdefault(self.loops[m].phase, {})[m] = state
    for phase, group in sorted(by_phase.items()):
      with timings.phase('epochs'):   # the one-time feature pass counts with the epochs
        self._open_phase(phase, group)
    del states
    while True:
      for m in self._alive():
        if self.loops[m].phase_over:
          self._enter_finetuning(m, self._axes[0].remove(m))
      alive = self._alive()
      if not alive:
        break
      self._epoch(alive, partials)
      partials = {}
    return [self._results[m] if m in self._results else self._result(m) for m in range(len(self.members))]

  def _alive(self) -> list[int]:
    return [m for m, loop in enumerate(self.loops) if not loop.finished]

  def _order(self, m: int, epoch: int) -> np.ndarray:
    member = self.members[m]
    order = batch_order(self.train_settings.sampler, member.seed, epoch, self.data.train.labels[member.train_index],
                        self.batch)
    return member.train_index[order].astype(np.int32)

  @staticmethod
  def _epoch_key(m_seed: int, epoch: int):
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(m_seed), 1), epoch)

  def _epoch(self, alive: list[int], partials: dict) -> None:
    """One epoch of every alive member, phase by phase; then each member's metrics row and record."""
    solo = len(self.members) == 1
    with timings.phase('epochs'):   # the checkpoint saves inside it count as 'checkpoints'
      start = time.perf_counter() - self._setup_seconds
      self._setup_seconds = 0.0
      epochs = {m: self.loops[m].epoch for m in alive}
      orders = {m: self._order(m, epochs[m]) for m in alive}
      keys = {m: self._epoch_key(self.members[m].seed, epochs[m]) for m in alive}
      done_before = {m: [{k: np.float32(v) for k, v in s.items()} for s in p.step_metrics]
                     for m, p in partials.items()}
      first = partials[alive[0]].step if solo and alive[0] in partials else 0
      # One process alone may stop mid-epoch; several must agree, which they do at the epoch's end.
      mid_epoch = (self.stop.requested if self.stop is not None and solo and sharding.process_count() == 1
                   and self.record.stops_mid_epoch else None)
      step_metrics, val_logits = {}, {}
      for phase in sorted({self.loops[m].phase for m in alive}):
        members = [m for m in alive if self.loops[m].phase == phase]
        axis = self._axes[phase]
        bar, on_step = self._progress(members[0], epochs[members[0]], len(orders[members[0]]), solo)
        step_metrics.update(axis.run_epoch(members, orders, keys, on_step, first, mid_epoch))
        if bar is not None:
          bar.close()
        for m in members:
          step_metrics[m] = done_before.get(m, []) + step_metrics[m]
          if len(step_metrics[m]) < len(orders[m]):
            self.record.interrupt(m, epochs[m] + 1, axis.state(m), self.loops[m], step_metrics[m], len(orders[m]),
                                  self.stop)
        val_logits.update(axis.val_logits(members, self.eval_batch))
      seconds = time.perf_counter() - start
      rows = {}
      for m in alive:
        rows[m] = self._record(m, epochs[m], step_metrics[m], val_logits[m], seconds)
    for m in alive:   # each member's share of the epoch's time
      self._seconds[m] += seconds / len(alive)
    self._log(alive, epochs, rows, seconds)
    for m in alive:
      if self.loops[m].finished:
        self._results[m] = self._result(m)
        self.record.finished(self._results[m])
    self._check_stop(alive, epochs)

  def _record(self, m: int, epoch: int, step_metrics: list, logits: np.ndarray, seconds: float) -> tuple:
    loop, member = self.loops[m], self.members[m]
    axis = self._axes[loop.phase]
    totals = {k: float(sum(np.asarray(s[k]) for s in step_metrics)) for k in step_metrics[0]}
    val = metrics.epoch_metrics(self.data.val.labels[member.val_index], logits, self.task(0).head,
                                len(self.data.class_names))
    schedule = self._schedule(loop.phase, self.steps[m])
    row = epoch_row(epoch + 1, totals, val, float(schedule(axis.updates(m) - 1)), loop.phase, seconds)
    last_phase = loop.phase == 1 or self.train_settings.finetune_epochs == 0
    improved, stopped_early = loop.record(row, self.rules, phase_end(loop, self.train_settings), last_phase)
    with timings.phase('checkpoints'):
      self.record.epoch_end(m, epoch + 1, axis.state(m), loop, improved)
    self._logits[m]['last'] = logits
    if improved:
      self._logits[m]['best'] = logits
    return row, improved, stopped_early

  def _schedule(self, phase: int, steps: int):
    """The phase's learning rate by optimizer update, for `steps` batches per epoch (`build_task`'s)."""
    if (phase, steps) not in self._schedules:
      updates = accumulation.updates_per_epoch(steps, self.task(phase).accumulate_steps)
      self._schedules[phase, steps] = optim.learning_rate_schedule(phase_config(self.config, phase).train, updates)
    return self._schedules[phase, steps]

  def _progress(self, m: int, epoch: int, steps: int, solo: bool):
    """(progress bar or None, on_step callback) of member m's epoch (`fpclass.train.progress`)."""
    return progress.step_progress(self.train_settings, self.record, self.loops[m], epoch, steps, solo)

  def _log(self, alive, epochs, rows, seconds) -> None:
    if self.summary_log:
      progress.log_chunk_epoch(self.train_settings, self.rules.monitor, [self.members[m].name for m in alive],
                               [rows[m] for m in alive], max(epochs.values()), seconds, self.log_prefix)
    else:
      progress.log_solo_epoch(self.train_settings, self.rules, self.loops[alive[0]], epochs[alive[0]], rows[alive[0]])

  def _check_stop(self, alive, epochs) -> None:
    """Ends the run after this epoch when a signal asked for it (with several processes training one
    model together, process 0's signal decides for all)."""
    if self.stop is None or all(self.loops[m].finished for m in alive):
      return
    requested = self.stop.requested()
    if not self.parallel.process_local:
      requested = sharding.agree_on(requested)
    if requested:
      epoch = max(epochs.values()) + 1
      raise RunInterrupted(f'{self.stop.name}: stopped after epoch {epoch}; {self.record.kept_on_stop} Launch the '
                           'same command again to resume.', self.stop.signum or signal.SIGTERM)

  def _result(self, m: int) -> MemberResult:
    loop = self.loops[m]
    use_best = self.train_settings.select_checkpoint == 'best' and loop.best_epoch is not None
    logits = self._logits[m]['best' if use_best else 'last']
    last = best = None
    if self.record.keeps_states:
      axis = self._axes[loop.phase]
      last, best = jax.device_get(axis.state(m)), self.record.best(m)
    return MemberResult(self.members[m], loop, 'best' if use_best else 'last',
                        int(loop.best_epoch if use_best else loop.epoch),
                        None if logits is None else np.asarray(logits), last, best, self._seconds[m])


def solo_start(config, dataset, parallel=None):
  """(engine, state): the state a training run of `config` on `dataset` starts from (the engine's own init)."""
  member = Member(DataSettings.from_config(config.data).split.fold, int(config.seed), np.arange(len(dataset.train)),
                  np.arange(len(dataset.val)))
  train_data = TrainData(dataset.class_names, Split(dataset.train.images, dataset.train.labels),
                         Split(dataset.val.images, dataset.val.labels))
  engine = Engine(config, train_data, [member], record=None, parallel=parallel)
  return engine, engine.init_states()[0]
