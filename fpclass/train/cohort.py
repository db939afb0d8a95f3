"""The members one epoch loop trains together, set up: their tasks, first states, phases and model axes.

A member's randomness and data depend on its seed and split alone: its init key is fold_in(PRNGKey(seed), 0), its
epoch key fold_in(fold_in(PRNGKey(seed), 1), epoch) and step i's fold_in(epoch key, i), and its batches are
`batch_order(sampler, seed, epoch, its labels, batch)` mapped through its train indices. So a member trained
beside others equals the same member trained alone (`fpclass.train.loop.train_members`). The members share the
arrays those indices point into, and advance phase by phase through one form of the model axis
(`fpclass.train.axis`); phase 0 may train a frozen backbone's head on features computed once
(`fpclass.train.feature_cache`), and a member enters its fine-tuning phase when its own first phase ends.
"""
import dataclasses
import hashlib
import math
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from fpclass import fileio, models
from fpclass.config.run import RunSettings
from fpclass.data import stream
from fpclass.data.rows import take_rows
from fpclass.models import transfer
from fpclass.runtime.sharding import DataParallel
from fpclass.train import accumulation, augment, ema, feature_cache, optim, semi
from fpclass.train.axis import MemberData, Split, TrainData, VmapAxis
from fpclass.train.class_weights import class_weights as task_class_weights
from fpclass.train.loop_state import LoopState
from fpclass.train.members import Member, batch_size_for
from fpclass.train.sampling import batch_order
from fpclass.train.shared_work import SharedWork
from fpclass.train.steps import CompiledSteps, LoopAxis, resolve_loop, validation_batch
from fpclass.train.task import build_task


def program_settings(run: RunSettings) -> tuple[str, tuple]:
  """What a phase's train programs are compiled for among its settings (`run`, the phase's): the settings less
  what the programs take as arguments (`Task.arguments`: the rate, smoothing, the schedule's lengths where
  `optim.lengths_are_arguments`, and the augmentation magnitudes) and what the host alone reads (early stopping's
  patience, the next phase's epochs), and which augmentation ops are on. Part of `Cohort.programs`' key: two
  variants whose values are equal share programs, which `--mode auto` prices its first trials by
  (`fpclass.auto.search._warm_start`)."""
  on = tuple(bool(getattr(run.augment, name)) for name in augment.MAGNITUDES)   # which are on, not how much
  lengths = (dict(epochs=1, warmup_epochs=int(run.train.warmup_epochs > 0))
             if optim.lengths_are_arguments(run.train) else {})
  train = dataclasses.replace(run.train, learning_rate=0.0, label_smoothing=0.0, early_stopping_patience=0,
                              finetune_epochs=0, **lengths)
  structure = dataclasses.replace(run, train=train,
                                  augment=dataclasses.replace(run.augment, **dict.fromkeys(augment.MAGNITUDES, 0.0)))
  return repr(structure), on


class Cohort:
  """`members` of one run (one optimizer group: the same batch size and schedule) on `data`.

  `form` is the model axis ('loop' or 'vmap'); `parallel` the mesh (default: every device of the job); `budget`
  the device bytes cached features may take (default: `fpclass.data.stream.memory_budget`); `shared` the job's
  `SharedWork` (features, pretrained arrays), shared with its other cohorts; `teacher` a distillation teacher
  (`fpclass.train.task.Task.teacher`) every phase's task takes."""

  def __init__(self, run: RunSettings, data: TrainData, members: list[Member], *, form: str = 'loop',
               parallel: DataParallel | None = None, budget: int | None = None, shared: SharedWork | None = None,
               log_prefix: str = '', teacher=None):
    self.run, self.data, self.members, self.form, self.log_prefix = run, data, members, form, log_prefix
    self.teacher = teacher
    self.shared = shared if shared is not None else SharedWork()
    self.parallel = parallel or DataParallel.over()
    self.loop_form = resolve_loop(run.train.loop)
    self.budget = budget
    self.batch = batch_size_for(run.train, len(members[0].train_index))
    self.parallel.check_batch_size(self.batch)
    self.validation_batch = validation_batch(run.eval, self.batch)
    self.steps = [math.ceil(len(m.train_index) / self.batch) for m in members]
    self.image_shape = data.train.images.shape[1:]
    self.class_weights = [task_class_weights(run.train.class_weights, data.class_names,
                                             data.train.labels[m.train_index]) for m in members]
    self.axes = {}                 # phase -> its model axis
    self.setup_seconds = 0.0       # the one-time feature pass, counted in the first epoch's seconds
    self._tasks, self._val_images, self._schedules = {}, {}, {}

  def task(self, phase: int):
    """The phase's task, built once for every member (a member's class weights replace the first one's)."""
    if phase not in self._tasks:
      task = build_task(self.run.phase(phase), self.data.class_names,
                        self.data.train.labels[self.members[0].train_index], self.steps[0])
      if self.teacher is not None:
        task = dataclasses.replace(task, teacher=self.teacher)
      if self.data.unlabelled:   # the batches carry unlabelled images after the labelled ones (`order`)
        task = dataclasses.replace(task, semi=self.run.semi)
      self._tasks[phase] = task
    return self._tasks[phase]

  def initial_states(self) -> list:
    """Every member's initial state: pretrained weights read once, the rest initialised from its seed."""
    compiled = self.programs(0, self.task(0))
    model = self.run.model
    shapes = self.shared.get(('variable shapes', repr(self.task(0).model), self.image_shape),
                             lambda: compiled.variable_shapes(self.image_shape))
    # The file's arrays go into the abstract variables first, so only what it lacks is initialised; read
    # once for the job (its arrays are not changed by anyone).
    key = ('pretrained', repr(sorted(model.items())), repr(shapes))
    loaded = self.shared.get(key, lambda: transfer.load_pretrained(
        models.get_spec(model.name), model, shapes, fileio.cache_root(self.run.data.storage.cache_dir)))
    states = []
    for member in self.members:
      key = jax.random.fold_in(jax.random.PRNGKey(member.seed), 0)
      states.append(compiled.init(key, self.image_shape, compiled.init_variables(key, self.image_shape, loaded)))
    return states

  def order(self, m: int, epoch: int) -> np.ndarray:
    """Member m's batches of epoch `epoch` as rows of the shared train array, (steps, batch); with unlabelled
    images, each row continues with `config.semi.ratio` times as many of theirs (`fpclass.train.semi.order`)."""
    member = self.members[m]
    order = batch_order(self.run.train.sampler, member.seed, epoch, self.data.train.labels[member.train_index],
                        self.batch)
    rows = member.train_index[order].astype(np.int32)
    if not self.data.unlabelled:
      return rows
    return semi.order(rows, member.seed, epoch, *self.data.unlabelled, self.run.semi.ratio)

  def learning_rate(self, m: int, phase: int) -> float:
    """The learning rate of member m's last optimizer update in `phase` (the metrics row's)."""
    steps = self.steps[m]
    if (phase, steps) not in self._schedules:
      updates = accumulation.updates_per_epoch(steps, self.task(phase).accumulate_steps)
      self._schedules[phase, steps] = optim.learning_rate_schedule(self.run.phase(phase).train, updates)
    return float(self._schedules[phase, steps](self.axes[phase].updates(m) - 1))

  # ------------------------------------------------------------------------------------------------ phases

  def open_phase(self, phase: int, states: dict) -> None:
    """Puts members into the phase's axis, creating it on first use; phase 0's members come together,
    so its feature cache is decided once for all of them."""
    task, datas, val_array = self.task(phase), None, self.data.val.images
    if phase == 0:   # fine-tuning unfreezes the backbone: the cache serves the first phase alone
      task, datas, val_array = self._cached_phase(task, states)
    if datas is None:
      datas = {m: self._member_data(m, self.data.train, self.data.val.images) for m in states}
    if phase not in self.axes:
      if self.form == 'vmap':
        train = next(iter(datas.values())).train
        self.axes[phase] = VmapAxis(task, len(self.members), next(iter(states.values())), train, val_array,
                                    self.class_weights)
      else:
        self.axes[phase] = LoopAxis(task, self.programs(phase, task))
    for m, state in states.items():
      self.axes[phase].add(m, state, datas[m])

  def programs(self, phase: int, task) -> CompiledSteps:
    """The compiled programs of `task` (the phase's, or its feature-cached form), shared through the job's
    `SharedWork` by every variant whose key is equal: the phase's settings, except what the programs take as
    arguments (`Task.arguments`: the rate, smoothing, the schedule's lengths and the augmentation magnitudes)
    and what the host alone reads (early stopping's patience, the next phase's epochs), with its steps per
    epoch, the average's table, classes, teacher, mesh and loop form, and the head a feature cache trains. So a
    sweep over learning rates, or a search's trials that differ in their rate, smoothing, rotation or epochs
    alone (its rungs), trace and compile one step (each passes its own values)."""
    average = ema.table_length(task.ema_decay, task.ema_warmup, task.ema_updates) if task.ema_decay > 0 else 0
    key = ('train programs', *program_settings(self.run.phase(phase)), average, type(task).__name__,
           repr(getattr(task, 'head_model', None)),
           self.data.class_names, self.steps[0], id(self.teacher), self.loop_form,
           tuple(d.id for d in self.parallel.mesh.devices.flat))
    return self.shared.get(key, lambda: CompiledSteps(task, self.parallel, self.loop_form))

  def enter_finetuning(self, m: int, loop: LoopState, state, record) -> None:
    """Member m starts phase 1 from its best weights so far when early stopping chose them (as Keras'
    restore_best_weights would), else from the current ones, with a fresh optimizer. With an average of the
    weights (train.ema_decay) those are the averaged ones, which phase 0 was validated with (Keras' fit
    likewise ends by writing its averages into the model), and a fresh average starts with the phase."""
    state = state.for_evaluation()
    train = self.run.train
    if train.early_stopping_patience > 0:
      best = record.best_variables(m, state)
      state = state if best is None else best
    loop.phase, loop.phase_start, loop.phase_over, loop.wait = 1, loop.epoch, False, 0
    if len(self.members) == 1:
      tqdm.write(f'fine-tuning: {train.finetune_epochs} epochs with model.freeze_till={train.finetune_freeze_till}, '
                 f'learning rate x{train.finetune_lr_factor}')
    task = self.task(1)
    state = self.parallel.replicate(task.init(None, self.image_shape, {'params': state.params,
                                                                       'batch_stats': state.batch_stats}))
    self.open_phase(1, {m: state})

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

  def _cached_phase(self, task, states: dict):
    """(task, {m: MemberData}, val array) with the head training on features computed once per distinct
    frozen backbone, or (task, None, the val images) when the feature cache does not apply."""
    if self.data.unlabelled:   # the unlabelled images' views are random before the backbone, every step
      return task, None, self.data.val.images
    first = next(iter(states.values()))
    shared_val = self.data.val.images is self.data.train.images
    count = len(self.data.train.images) + (0 if shared_val else len(self.data.val.images))
    budget = self.budget if self.budget is not None else stream.memory_budget(self.run.data.storage.device_memory_budget)
    split = feature_cache.head_split(self.run, task, {'params': first.params, 'batch_stats': first.batch_stats},
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
    eval_batch = self.run.eval.batch_size
    computed = []

    def compute(images, state):
      computed.append(len(images))
      return feature_cache.compute_features(full, split, state, images, eval_batch)

    def features_of(images, state, digest):
      key = feature_cache.pass_key(task, split, digest, images, eval_batch)
      return self.shared.get(key, lambda: compute(images, state))

    features = {}
    for m, digest in digests.items():
      if digest not in features:   # every member with this backbone shares the pass
        train_x = features_of(self.data.train.images, states[m], digest)
        val_x = train_x if shared_val else features_of(self.data.val.images, states[m], digest)
        features[digest] = (Split(train_x, self.data.train.labels), val_x)
    seconds = time.perf_counter() - start
    self.setup_seconds += seconds
    passes = f'{len(features)} passes' if len(features) > 1 else 'once'
    ran = (f'ran {passes} over {len(self.data.train.images)} train'
           f'{"" if shared_val else f" and {len(self.data.val.images)} val"} images ({seconds:.1f}s)' if computed
           else 'ran earlier in this job over the same images')
    tqdm.write(f'{self.log_prefix}feature cache: {self.run.train.feature_cache}: the frozen network before '
               f'{split.name!r} {ran} for {len(states)} model(s); the head trains on its '
               f'{"x".join(map(str, split.feature_shape))} outputs')
    datas = {m: self._member_data(m, *features[digests[m]]) for m in states}
    return feature_cache.cached_task(task, split), datas, next(iter(features.values()))[1]


def solo_start(run: RunSettings, dataset, parallel=None):
  """(cohort, state): the state a training run of `run` on `dataset` starts from (the loop's own init)."""
  member = Member(run.data.split.fold, run.seed, np.arange(len(dataset.train)), np.arange(len(dataset.val)))
  train_data = TrainData(dataset.class_names, Split(dataset.train.images, dataset.train.labels),
                         Split(dataset.val.images, dataset.val.labels))
  cohort = Cohort(run, train_data, [member], parallel=parallel)
  return cohort, cohort.initial_states()[0]
