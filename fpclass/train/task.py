"""What one training setup computes: the train state, the loss, and pure train/predict steps.

The data lives on the device as uint8; a batch is an index gather; augmentation and normalisation run
inside the jitted step. `Task.train_step` is a pure function of (state, images, labels, index, key),
so it can also be vmapped over a leading model axis (k folds x seeds) or sharded. Data streamed from the
host (over the device budget) takes `Task.train_batch`, the same step on a batch already gathered. The
state may carry an average of the weights (`fpclass.train.ema`), and the optimizer may accumulate gradients
over micro-batches (`fpclass.train.accumulation`).
"""
import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from fpclass import models
from fpclass.analysis import metric_registry
from fpclass.config.inputs import AugmentSettings, DataSettings
from fpclass.config.model import ModelSettings
from fpclass.config.run import RunSettings
from fpclass.config.training import TrainSettings
from fpclass.errors import UserInputError
from fpclass.models.heads import binary_cross_entropy, cross_entropy, head_for, predicted_class, probabilities
from fpclass.models.preprocessing import Normalisation
from fpclass.models.weights_ref import weights_normalisation
from fpclass.train import accumulation, augment, ema, optim, precision, semi
from fpclass.train.class_weights import class_weights

MIX_STREAM = 1  # folded into the augmentation key for `augment.mix_batch`
SEMI_STREAM = 2  # folded into it for the unlabelled images' weak and strong views (`fpclass.train.semi`)


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # {'params', 'batch_stats'} averaged over the updates (config.train.ema_decay > 0), else None: None adds no
  # leaf, so a run without the average has the state, programs and checkpoints it always had.
  ema: Any = None
  # config.semi.thresholds='adaptive': the running means its thresholds come from (`semi.adaptive_init`), else None.
  semi: Any = None

  def for_evaluation(self) -> 'TrainState':
    """The state with the variables the model is validated, selected, saved and served with: the averaged
    ones when the run keeps an average (then without it), else this state."""
    if self.ema is None:
      return self
    return self.replace(params=self.ema['params'], batch_stats=self.ema['batch_stats'], ema=None)


@dataclasses.dataclass(frozen=True)
class Task:
  """Everything static about one training setup; its methods are pure and jittable."""
  model: Any
  tx: optax.GradientTransformation
  normalisation: Normalisation
  augment_cfg: AugmentSettings
  head: str
  num_classes: int
  class_weights: tuple | None = None
  label_smoothing: float = 0.0
  l2: float = 0.0
  l2_params: str = '.*kernel'
  device_resize: tuple = ()      # (height, width) to resize to on the device, after augmentation
  repeat_rgb: bool = False       # repeat one grayscale channel to the 3 an RGB model expects
  ema_decay: float = 0.0         # > 0: the state keeps an average of the variables (`fpclass.train.ema`)
  ema_warmup: bool = True
  ema_updates: int = 0           # the optimizer updates the phase plans: the host-side table of EMA weights
  accumulate_steps: int = 1      # > 1: `tx` is wrapped by `fpclass.train.accumulation.accumulate`
  # Distillation (--mode distill): `teacher.targets(view, targets)` replaces each batch's targets with the teacher's
  # probabilities of the very augmented view (in [0, 1]) the student trains on (fpclass.distill.teacher.Teacher).
  teacher: Any = None
  # `fpclass.train.optim.param_groups`' labels: the gradient is taken with respect to the parameters that are
  # not 'frozen' only (`trained_gradient`). None: every parameter trains.
  param_groups: Any = None
  # (learning rate, epochs, warmup epochs) -> the update transformation (`tx` is it at this task's values), so they
  # can be arguments of the train programs; None: `tx` alone (the learning-rate finder's sweep).
  optimizer: Any = None
  learning_rate: Any = None
  # The schedule's lengths in epochs, when they are arguments (`optim.lengths_are_arguments`; the warmup's when
  # on); None: constants of the programs.
  epochs: Any = None
  warmup_epochs: Any = None
  # The augmentation magnitudes a train program was passed ({name: scalar}, `augment.magnitudes`); None: augment_cfg's.
  augment_values: Any = None
  # config.semi when the batches carry unlabelled images after the labelled ones (`fpclass.train.semi`); else None.
  semi: Any = None

  def model_input_shape(self, image_shape) -> tuple:
    height, width, channels = image_shape
    if self.device_resize:
      height, width = self.device_resize
    return height, width, 3 if self.repeat_rgb else channels

  def init_variables(self, key, image_shape) -> dict:
    """Freshly initialised model variables (params and batch_stats) for uint8 images of `image_shape`."""
    dummy = jnp.zeros((1, *self.model_input_shape(image_shape)), jnp.float32)
    variables = self.model.init({'params': key, 'dropout': key}, dummy, train=False)
    return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}

  def init(self, key, image_shape, variables: dict | None = None) -> TrainState:
    """A train state from fresh variables, or from `variables` (e.g. pretrained weights)."""
    variables = variables or self.init_variables(key, image_shape)
    average = ema.init({'params': variables['params'], 'batch_stats': variables['batch_stats']}) \
        if self.ema_decay > 0 else None
    running = (semi.adaptive_init(self.num_classes)
               if self.semi is not None and self.semi.thresholds == 'adaptive' else None)
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                      batch_stats=variables['batch_stats'], opt_state=self.tx.init(variables['params']), ema=average,
                      semi=running)

  def optimizer_updates(self, state: TrainState):
    """The optimizer updates made so far in the state's phase: its steps, or with accumulation its completed
    cycles (what the learning-rate schedule and the average's warmup count)."""
    return state.opt_state.gradient_step if self.accumulate_steps > 1 else state.step

  def prepare(self, images_u8, key=None):
    """uint8 NHWC -> normalised float32 model input, augmented when a key is given."""
    return self.model_input(self.augmented(images_u8, key))

  def augmented(self, images_u8, key=None):
    """uint8 NHWC -> float32 in [0, 1], augmented when a key is given: the view, before any model's input."""
    x = images_u8.astype(jnp.float32) / 255.0
    if key is not None and self.augment_cfg.enabled:
      x = augment.augment_batch(x, key, self.augment_cfg, self.augment_values)
    return x

  def model_input(self, x):
    """A view in [0, 1] -> this model's normalised input (resized on the device, grayscale repeated)."""
    if self.device_resize:
      x = jax.image.resize(x, (x.shape[0], *self.device_resize, x.shape[-1]), 'bilinear')
    if self.repeat_rgb:
      x = jnp.repeat(x, 3, axis=-1)
    return self.normalisation(x)

  def apply(self, params, batch_stats, x, train: bool = False, rngs=None):
    variables = {'params': params, 'batch_stats': batch_stats} if batch_stats else {'params': params}
    if train and batch_stats:
      (logits, features), updates = self.model.apply(variables, x, train=True, rngs=rngs,
                                                     mutable=['batch_stats'])
      return logits, features, updates['batch_stats']
    logits, features = self.model.apply(variables, x, train=train, rngs=rngs)
    return logits, features, batch_stats

  def train_step(self, state: TrainState, images, labels, index, key):
    """One optimizer step on the examples at `index`; returns (state, {loss_sum, correct, count})."""
    return self.train_batch(state, images[index], labels[index], key, rows=index)

  def train_batch(self, state: TrainState, batch_images, batch_labels, key, rows=None):
    """`train_step` on a batch already gathered (streamed from the host): the same computation, so a
    streamed run and an in-memory one train the same model bit for bit. `rows`, the batch's rows of the
    training images where known (in memory), let a cross-fitted teacher choose its models per image."""
    aug_key, dropout_key = jax.random.split(key)
    strong = running = None
    if self.semi is not None:   # the weak views' pass is forward only, outside the gradient (`fpclass.train.semi`)
      batch_images, batch_labels, unlabelled = semi.split(batch_images, batch_labels, self.semi.ratio)
      rows = None if rows is None else rows[:batch_images.shape[0]]
      weak_key, strong_key = jax.random.split(jax.random.fold_in(aug_key, SEMI_STREAM))
      weak_logits, _, _ = self.apply(state.params, state.batch_stats, self.prepare(unlabelled, weak_key), train=True,
                                     rngs={'dropout': jax.random.fold_in(dropout_key, SEMI_STREAM)})
      weak = probabilities(weak_logits, self.head, xp=jnp)
      running = state.semi
      pseudo, mask = semi.pseudo_targets(weak, self.semi.threshold if running is None else
                                         semi.adaptive_thresholds(running))
      strong = self.model_input(augment.augment_batch(unlabelled.astype(jnp.float32) / 255.0, strong_key,
                                                      semi.strong_augment(self.augment_cfg, self.semi),
                                                      self.augment_values))
    x = self.prepare(batch_images, aug_key)
    y = targets = batch_labels
    if self.augment_cfg.mixing_enabled:
      # Its own key, folded from the augmentation key, so the per-image draws stay those of an unmixed run.
      x, targets = augment.mix_batch(x, self.targets(y), jax.random.fold_in(aug_key, MIX_STREAM), self.augment_cfg)
    if self.teacher is not None:   # the same key: the view the student sees (mixed as it is mixed)
      view = self.augmented(batch_images, aug_key)
      if self.augment_cfg.mixing_enabled:
        view, _ = augment.mix_batch(view, self.targets(y), jax.random.fold_in(aug_key, MIX_STREAM), self.augment_cfg)
      targets = self.teacher.targets(view, targets if targets.ndim > 1 else self.targets(y), rows)

    temperature = 1.0 if self.teacher is None else self.teacher.temperature

    def loss_fn(params):
      inputs = x if strong is None else jnp.concatenate([x, strong])   # one pass: batch norm sees both
      every, _, new_stats = self.apply(params, state.batch_stats, inputs, train=True,
                                       rngs={'dropout': dropout_key})
      logits = every[:x.shape[0]]
      if temperature == 1.0:
        loss = self.loss(logits, targets)
      else:   # Hinton et al.: the softened distributions matched, the gradients' scale kept by T^2
        loss = self.loss(logits / temperature, targets) * temperature ** 2
      if strong is not None:
        loss = loss + self.semi.weight * jnp.mean(mask * cross_entropy(every[x.shape[0]:], pseudo, self.head))
      loss = loss + optim.l2_penalty(params, self.l2, self.l2_params)
      return loss, (logits, new_stats)

    (loss, (logits, new_stats)), grads = self.trained_gradient(loss_fn, state.params)
    tx = self.tx if self.optimizer is None else self.optimizer(self.learning_rate, self.epochs, self.warmup_epochs)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state)
    if strong is not None and running is not None:
      new_state = new_state.replace(semi=semi.adaptive_update(running, weak, self.semi.threshold_momentum))
    if state.ema is not None:
      new_state = new_state.replace(ema=self._averaged(new_state))
    # With mixing, the loss is the mixed targets' and `correct` counts agreement with each image's own label
    # (multi-label: images whose every label is predicted right at 0.5, validation's subset accuracy).
    agree = predicted_class(logits, self.head) == y
    correct = jnp.sum(jnp.all(agree, axis=-1)) if self.head == 'multilabel' else jnp.sum(agree)
    metrics = {'loss_sum': loss * y.shape[0], 'correct': correct, 'count': jnp.asarray(y.shape[0])}
    if strong is not None:   # the unlabelled images and those that passed the threshold (metrics.csv's pseudo_rate)
      metrics.update(unlabelled=jnp.asarray(mask.shape[0]), pseudo_labelled=jnp.sum(mask, dtype=jnp.int32))
    return new_state, metrics

  def trained_gradient(self, loss_fn, params):
    """`jax.value_and_grad(loss_fn, has_aux=True)(params)`, differentiated with respect to the parameters that
    train only; a frozen parameter's gradient is zero, as it is absent in Keras (trainable=False) and PyTorch
    (requires_grad=False), so global-norm clipping counts the trained ones alone. Why: autodiff through a frozen
    backbone traced its whole backward pass only for XLA to drop it (docs/finetuning.md)."""
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    if self.param_groups is None:
      return value_and_grad(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    # The optimizer's own labels (multi_transform's), as a tree of the params' keys: its leaves come in the same order.
    trains = [label != 'frozen' for label in jax.tree_util.tree_leaves(self.param_groups(params))]
    if all(trains):
      return value_and_grad(params)

    def merged(trained):
      it = iter(trained)
      return jax.tree_util.tree_unflatten(treedef, [next(it) if t else leaf for t, leaf in zip(trains, leaves)])

    value, trained_grads = jax.value_and_grad(lambda trained: loss_fn(merged(trained)), has_aux=True)(
        [leaf for t, leaf in zip(trains, leaves) if t])
    it = iter(trained_grads)
    grads = [next(it) if t else jnp.zeros_like(leaf) for t, leaf in zip(trains, leaves)]
    return value, jax.tree_util.tree_unflatten(treedef, grads)

  def _averaged(self, state: TrainState):
    """The state's average after this step: moved once per optimizer update, to the updated weights and the
    current batch statistics (timm updates its ModelEmaV3 after each optimizer step)."""
    weight = ema.weight_at(self.optimizer_updates(state), self.ema_decay, self.ema_warmup, self.ema_updates)
    moved = ema.update(state.ema, {'params': state.params, 'batch_stats': state.batch_stats}, weight)
    if self.accumulate_steps == 1:
      return moved
    updated = state.opt_state.mini_step == 0   # this micro-batch completed a cycle
    return jax.tree_util.tree_map(lambda a, b: jnp.where(updated, a, b), moved, state.ema)

  def arguments(self) -> dict:
    """The settings the train programs take as arguments, not as constants, at this task's values
    (None: the task has none), the schedule's lengths as 'train.epochs' and 'train.warmup_epochs', the augmentation
    magnitudes it turns on as 'augment.<name>'. Why: tasks that differ in these alone share compiled programs
    (`fpclass.train.cohort`), as a k-fold experiment's members with their own class weights do, and a sweep's or a
    search's variants that differ in their learning rate, label smoothing, epochs (a search's rungs), or
    rotation, zoom, translation and erasing magnitudes."""
    return {'class_weights': self.class_weights, 'label_smoothing': self.label_smoothing,
            'learning_rate': None if self.optimizer is None else self.learning_rate,
            'train.epochs': self.epochs, 'train.warmup_epochs': self.warmup_epochs,
            **{f'augment.{name}': value for name, value in augment.magnitudes(self.augment_cfg).items()}}

  def with_arguments(self, arguments: dict | None) -> 'Task':
    """This task with `arguments` (as `arguments()` gives them; arrays traced by a train program) in place of its
    own; None values, and None, leave them."""
    changed = {k.removeprefix('train.'): v for k, v in (arguments or {}).items() if v is not None}
    values = {k.removeprefix('augment.'): changed.pop(k) for k in list(changed) if k.startswith('augment.')}
    if values:
      changed['augment_values'] = values
    return dataclasses.replace(self, **changed) if changed else self

  def targets(self, labels):
    """(N, num_classes) float targets: one-hot of int labels, or a multi-label batch's 0/1 rows as floats."""
    return labels.astype(jnp.float32) if self.head == 'multilabel' else jax.nn.one_hot(labels, self.num_classes)

  def loss(self, logits, targets):
    """Mean cross-entropy against int labels (N,) or class probabilities (N, num_classes) (mixed batches).

    Weighted by class as PyTorch's CrossEntropyLoss(weight=...) does for labels: sum_i w_i ce_i / sum_i w_i,
    where a soft target's w_i is its expected class weight (a 70:30 mix weighs 0.7 w_a + 0.3 w_b), which is
    w[y_i] for a label. Smoothing applies to the soft target as to a label's one-hot.

    Multi-label: the binary cross-entropy averaged over every image and class, as torch's
    `binary_cross_entropy_with_logits(reduction='mean')`, with the class weights as its `pos_weight`."""
    if self.head == 'multilabel':
      return jnp.mean(binary_cross_entropy(logits, targets, self.label_smoothing, self.class_weights))
    if targets.ndim == 1:
      targets = jax.nn.one_hot(targets, self.num_classes)
    per_example = cross_entropy(logits, targets, self.head, self.label_smoothing)
    if self.class_weights is None:
      return jnp.mean(per_example)
    w = targets @ jnp.asarray(self.class_weights, jnp.float32)
    return jnp.sum(w * per_example) / jnp.sum(w)

  def predict(self, params, batch_stats, images_u8):
    logits, _, _ = self.apply(params, batch_stats, self.prepare(images_u8), train=False)
    return logits


@dataclasses.dataclass(frozen=True)
class TaskView:
  """Another inference pass over a task's model, shaped like a Task for `CompiledSteps.predict` and
  `predict_logits`: a subclass defines `predict(params, batch_stats, uint8 images)` (the frozen backbone's
  features, pooled features, ...); the head and the class count are the task's."""
  task: Task

  @property
  def head(self) -> str:
    return self.task.head

  @property
  def num_classes(self) -> int:
    return self.task.num_classes


def check_label_task(run: RunSettings) -> None:
  """The head, monitor and sampler fit config.data.task: the monitor is a registered metric of the task
  (`fpclass.analysis.metric_registry`), and the class-balanced sampler (one class per image) needs single-label
  data."""
  head = head_for(run.model, run.data.labels)
  metric_registry.monitor_mode(run.train.monitor, metric_registry.task_of_head(head))
  if head == 'multilabel' and run.train.sampler == 'balanced':
    raise UserInputError("config.train.sampler='balanced' draws classes evenly, which needs one class per image; "
                         "with config.data.task='multilabel' use 'uniform' and config.train.class_weights='auto'")


def model_input(model: ModelSettings, data: DataSettings) -> tuple[Normalisation, bool]:
  """(normalisation, repeat_rgb) for the configured model and data.

  A pretrained model takes its family's normalisation from the registry (its weights expect it), not
  config.data.mean/std. One-channel data meets an RGB-pretrained model either through a stem folded for
  one channel (config.model.in_channels=1, with the channel-averaged normalisation) or by repeating the
  channel (in_channels=3).
  """
  norm = weights_normalisation(model)   # a Hub checkpoint's own mean and std
  if norm is None:
    return Normalisation.from_settings(data.inputs, data.decode.channels), False
  data_channels, model_channels = data.decode.channels, int(model.get('in_channels', 3))
  if model_channels not in (1, 3):
    raise UserInputError(f'config.model.in_channels={model_channels}: use 3, or 1 for a grayscale-folded stem')
  if data_channels == 3 and model_channels == 1:
    raise UserInputError('config.model.in_channels=1 needs grayscale data (config.data.channels=1)')
  if model_channels == 1:
    return norm.to_grayscale(), False
  return norm, data_channels == 1


def averaging_and_accumulation(train: TrainSettings) -> dict:
  """config.train's ema_decay, ema_warmup and accumulate_steps (checked by TrainSettings), as `Task` fields."""
  return dict(ema_decay=train.ema_decay, ema_warmup=train.ema_warmup, accumulate_steps=train.accumulate_steps)


def build_task(run: RunSettings, class_names, train_labels, steps_per_epoch: int, backend: str | None = None) -> Task:
  """The task of a run's typed settings (`RunSettings.from_config(config)` outside a plan); `backend` (default:
  JAX's) decides what train.precision means. `steps_per_epoch` counts batches (micro-batches under
  train.accumulate_steps)."""
  train, model_settings = run.train, run.model
  model = models.create_model(model_settings, len(class_names), dtype=precision.compute_dtype(train.precision, backend))
  normalisation, repeat_rgb = model_input(model_settings, run.data)
  resize = run.data.inputs.device_resize
  if resize and (len(resize) != 2 or min(resize) < 1):
    raise UserInputError(f'config.data.device_resize={resize}: give (height, width) or ()')
  extras = averaging_and_accumulation(train)
  k = extras['accumulate_steps']
  # The schedule counts optimizer updates: ceil(steps / k) of them per epoch (fpclass.train.accumulation).
  updates = accumulation.updates_per_epoch(steps_per_epoch, k)
  groups = optim.param_groups(model_settings)

  def optimizer(learning_rate, epochs=None, warmup_epochs=None):
    return accumulation.accumulate(optim.make_optimizer(train, updates, groups, learning_rate=learning_rate,
                                                        epochs=epochs, warmup_epochs=warmup_epochs),
                                   steps_per_epoch, k)
  lengths = optim.lengths_are_arguments(train)
  return Task(model=model, tx=optimizer(train.learning_rate), optimizer=optimizer,
              learning_rate=train.learning_rate, **extras, param_groups=groups,
              epochs=train.epochs if lengths else None,
              warmup_epochs=train.warmup_epochs if lengths and train.warmup_epochs > 0 else None,
              ema_updates=updates * train.epochs,
              normalisation=normalisation, repeat_rgb=repeat_rgb, device_resize=resize,
              augment_cfg=run.augment, head=head_for(model_settings, run.data.labels), num_classes=len(class_names),
              class_weights=class_weights(train.class_weights, class_names, train_labels),
              label_smoothing=train.label_smoothing, l2=train.l2, l2_params=train.l2_params)


def common_batch(batch_size: int, sizes) -> int:
  """The one batch in which to predict sets of these sizes: `batch_size`, or the largest set when that is
  smaller (the others padded up to it), so they share one compiled program; at least 1."""
  return max(1, min(int(batch_size), max(sizes, default=0)))
