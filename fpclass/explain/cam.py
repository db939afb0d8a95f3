"""Class activation maps and guided backpropagation as pure, batched, jit-compiled functions.

    maps = cam(model.apply, variables, images, targets, layer='conv2', method='gradcam')   # (N, H, W) in [0, 1]

The gradient of each image's target score at a named feature map comes from one forward pass and one
`jax.vjp` pull-back through the model's 'perturbations' collection (`fpclass.models.feature`); the
activations come from its 'intermediates' collection. The pull-back of the batch's summed target scores
gives every image its own gradient because, in inference mode, no image's score depends on another
image (batch norm uses its running averages); tests check batched == one image at a time. Gradients
and maps are two jitted stages, so one compilation of the model serves every method.

Design notes: docs/modules.md (`fpclass/explain/cam.py`).
"""
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fpclass.errors import UserInputError
from fpclass.models import INTERMEDIATES, PERTURBATION_PREFIX, RELU_FIELD

METHODS = {'gradcam': 'Grad-CAM', 'gradcam++': 'Grad-CAM++', 'hirescam': 'HiResCAM'}  # name -> display name
EPSILON = 1e-7          # pytorch-grad-cam's scale_cam_image epsilon
GRADCAM_PP_EPSILON = 1e-6  # pytorch-grad-cam's GradCAMPlusPlus epsilon


def cam(apply_fn: Callable, variables, images, targets, layer: str, method: str = 'gradcam') -> jax.Array:
  """Normalised class activation maps, (N, H, W) in [0, 1], for normalised float images (N, H, W, C).

  apply_fn: a Flax `Module.apply` (or anything with its signature and `mutable` argument) returning
  `(logits, features)`; layer: a feature-map name recorded with `fpclass.models.feature` ('conv2'), or a
  '/'-separated path suffix ('backbone/stage4') when the name alone is ambiguous.
  """
  _check_method(method)
  activations, gradients, _ = layer_gradients(apply_fn, variables, images, targets, layer)
  return maps_from_gradients(activations, gradients, method, size=jnp.shape(images)[1:3])


def layer_gradients(apply_fn, variables, images, targets, layer: str):
  """(activations, gradients of each image's target score, logits) at `layer`; not normalised."""
  images = jnp.asarray(images)
  targets = _check_targets(targets, images)
  out = _layer_gradients_jit(apply_fn, variables, images, targets, layer=layer)
  _check_target_range(targets, out[2].shape[-1])
  return out


@functools.partial(jax.jit, static_argnames=('method', 'size'))
def maps_from_gradients(activations, gradients, method: str, size) -> jax.Array:
  """A method's map from a layer's activations and gradients (N, h, w, C), normalised and resized to `size`.

  A separate jitted stage from the gradients, so one compilation of the model's forward and backward
  pass serves every method.
  """
  _check_method(method)
  if method == 'gradcam':
    raw = jnp.einsum('nhwc,nc->nhw', activations, jnp.mean(gradients, axis=(1, 2)))
  elif method == 'gradcam++':
    g2 = gradients ** 2
    g3 = g2 * gradients
    sum_activations = jnp.sum(activations, axis=(1, 2), keepdims=True)
    alpha = g2 / (2 * g2 + sum_activations * g3 + GRADCAM_PP_EPSILON)
    alpha = jnp.where(gradients != 0, alpha, 0.0)
    weights = jnp.sum(jax.nn.relu(gradients) * alpha, axis=(1, 2))
    raw = jnp.einsum('nhwc,nc->nhw', activations, weights)
  else:  # hirescam
    raw = jnp.sum(gradients * activations, axis=-1)
  return normalise(raw, size)


def feature_maps(apply_fn, variables, images) -> dict:
  """Every feature map the model records with `fpclass.models.feature`, keyed by '/'-joined path
  ('conv2', or 'backbone/stage4' inside a wrapper)."""
  _, state = apply_fn(variables, images, mutable=INTERMEDIATES)
  return {_display_name(key): value for key, value in traverse_util.flatten_dict(state[INTERMEDIATES]).items()}


def feature_layers(apply_fn, variables, image_shape) -> list:
  """The names `cam` accepts as `layer` for this model, in the order the model records them."""
  return [_display_name(key) for key in _entries(apply_fn, variables, _abstract_batch(image_shape))]


def check_layer(apply_fn, variables, image_shape, layer: str) -> None:
  """Raises UserInputError, listing the model's feature maps, unless `layer` names exactly one of them.
  Nothing is computed or compiled: the model is only traced for its shapes."""
  _find_entry(_entries(apply_fn, variables, _abstract_batch(image_shape)), layer)


def explanation_program(apply_fn, layer: str, method: str, guided_apply_fn=None, prepare=None) -> Callable:
  """One jitted program, `(variables, images, targets) -> (maps (N, H, W), Guided Grad-CAM (N, H, W, C) or
  None)`, that does what `prepare`, `cam` and `guided_backprop` + `guided_gradcam` do in turn: a figure's
  whole explanation is one compiled program per batch shape instead of one per stage (and per eager op of
  `prepare`). `prepare` maps the given images (e.g. uint8) to the model's input; targets must be valid
  class indices (int32), as `cam` checks them."""
  _check_method(method)

  def explain(variables, images, targets):
    x = prepare(images) if prepare is not None else images
    activations, gradients, _ = _layer_gradients(apply_fn, variables, x, targets, layer)
    maps = maps_from_gradients(activations, gradients, method, size=x.shape[1:3])
    if guided_apply_fn is None:
      return maps, None
    guided, _ = _input_gradients(guided_apply_fn, variables, x, targets)
    return maps, guided_gradcam(guided, maps)
  return jax.jit(explain)


def feature_maps_program(apply_fn, prepare=None) -> Callable:
  """`feature_maps` with `prepare` in front, as one jitted program `(variables, images) -> {name: map}`."""
  return jax.jit(lambda variables, images: feature_maps(apply_fn, variables,
                                                        prepare(images) if prepare is not None else images))


def normalise(maps, size) -> jax.Array:
  """ReLU, per-image min-max, bilinear resize of (N, h, w) maps to `size` (H, W), min-max again."""
  maps = _min_max(jax.nn.relu(maps))
  maps = jax.image.resize(maps, (maps.shape[0], *size), method='linear')
  return _min_max(maps)


@jax.custom_vjp
def guided_relu(x):
  """ReLU whose backward pass keeps a gradient only where both the input and the gradient are positive."""
  return jnp.maximum(x, 0)


def _guided_relu_fwd(x):
  return jnp.maximum(x, 0), x


def _guided_relu_bwd(x, g):
  return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)


def guided_model(model):
  """A copy of `model` whose ReLUs are `guided_relu` (same parameters, same forward pass)."""
  fields = {f.name for f in dataclasses.fields(model)}
  if RELU_FIELD not in fields:
    raise UserInputError(f'model {type(model).__name__} has no {RELU_FIELD!r} field, so guided backpropagation '
                         'cannot swap its ReLUs; give it one as fpclass.models describes')
  return model.clone(**{RELU_FIELD: guided_relu})


def guided_backprop(guided_apply_fn: Callable, variables, images, targets) -> jax.Array:
  """d(target score)/d(image) through guided ReLUs, (N, H, W, C), unnormalised.

  guided_apply_fn: `guided_model(model).apply`; build it once and reuse it, since jit compiles per model.
  """
  images = jnp.asarray(images)
  targets = _check_targets(targets, images)
  gradients, logits = _input_gradients(guided_apply_fn, variables, images, targets)
  _check_target_range(targets, logits.shape[-1])
  return gradients


def guided_gradcam(guided_gradients, maps) -> jax.Array:
  """Guided Grad-CAM: guided backprop gradients (N, H, W, C) weighted by resized CAM maps (N, H, W)."""
  return guided_gradients * maps[..., None]


# -- the jitted core ---------------------------------------------------------------------------------------

def _entries(apply_fn, variables, images) -> dict:
  """The model's perturbation entries, {path tuple: ShapeDtypeStruct} in the order the model records them
  (network order), without running it (`images` may be abstract: a jax.ShapeDtypeStruct)."""
  order = []

  def perturbations(images):
    state = apply_fn(variables, images, mutable='perturbations')[1]['perturbations']
    # Read while tracing: Flax fills the collection as the model runs, but eval_shape's output, a pytree,
    # comes back with its dict keys sorted.
    order.extend(traverse_util.flatten_dict(state))
    return state
  abstract = traverse_util.flatten_dict(jax.eval_shape(perturbations, images))
  return {key: abstract[key] for key in order}


def _abstract_batch(image_shape) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)


def _layer_gradients(apply_fn, variables, images, targets, layer):
  entries = _entries(apply_fn, variables, images)
  key = _find_entry(entries, layer)
  zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in entries.items()}

  def logits_at(perturbation):
    # Only `layer`'s entry is differentiated, so the backward pass stops there.
    perturbations = traverse_util.unflatten_dict({**zeros, key: perturbation})
    (logits, _), state = apply_fn({**variables, 'perturbations': perturbations}, images, mutable=INTERMEDIATES)
    return logits, traverse_util.flatten_dict(state[INTERMEDIATES])[key]

  logits, pull_back, activations = jax.vjp(logits_at, zeros[key], has_aux=True)
  (gradients,) = pull_back(_score_cotangent(logits, targets))
  return activations, gradients, logits


_layer_gradients_jit = jax.jit(_layer_gradients, static_argnames=('apply_fn', 'layer'))


@functools.partial(jax.jit, static_argnames=('apply_fn',))
def _input_gradients(apply_fn, variables, images, targets):
  logits, pull_back = jax.vjp(lambda x: apply_fn(variables, x)[0], images)
  (gradients,) = pull_back(_score_cotangent(logits, targets))
  return gradients, logits


def _score_cotangent(logits, targets):
  """d(sum of each image's target score)/d(logits): one-hot rows, or +-1 for a one-logit sigmoid head."""
  if logits.shape[-1] == 1:
    if targets is None:
      targets = (logits[:, 0] > 0).astype(jnp.int32)
    return jnp.where(targets == 1, 1.0, -1.0)[:, None].astype(logits.dtype)
  if targets is None:
    targets = jnp.argmax(logits, axis=-1)
  return jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)


def _min_max(maps):
  low = jnp.min(maps, axis=(1, 2), keepdims=True)
  high = jnp.max(maps, axis=(1, 2), keepdims=True)
  return (maps - low) / (high - low + EPSILON)


def _find_entry(entries: dict, layer: str) -> tuple:
  *parents, name = layer.split('/')
  wanted = (*parents, PERTURBATION_PREFIX + name)
  matches = [key for key in entries if key[-len(wanted):] == wanted]
  if len(matches) != 1:
    available = [_display_name(key) for key in entries]
    problem = 'is ambiguous; give a longer path' if matches else 'is not a recorded feature map'
    raise UserInputError(f'CAM layer {layer!r} {problem}; this model records {available}')
  return matches[0]


def _display_name(key: tuple) -> str:
  return '/'.join((*key[:-1], key[-1].removeprefix(PERTURBATION_PREFIX)))


def _check_method(method: str) -> None:
  if method not in METHODS:
    raise UserInputError(f'CAM method {method!r}: choose one of {list(METHODS)}')


def _check_targets(targets, images):
  if images.ndim != 4:
    raise UserInputError(f'images must be a batch (N, H, W, C); got shape {tuple(images.shape)}')
  if targets is None:
    return None
  targets = jnp.asarray(targets)
  if targets.shape != (images.shape[0],):
    raise UserInputError(f'targets has shape {tuple(targets.shape)} but there are {images.shape[0]} images: '
                         'give exactly one target class per image')
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise UserInputError(f'targets must be integer class indices, got dtype {targets.dtype}')
  return targets.astype(jnp.int32)


def _check_target_range(targets, num_logits: int) -> None:
  """After the call, when the number of logits is known: an out-of-range one-hot row is all zeros, which
  would give a silently blank map."""
  if targets is None or isinstance(targets, jax.core.Tracer):
    return
  values = np.asarray(targets)
  limit = 2 if num_logits == 1 else num_logits
  bad = values[(values < 0) | (values >= limit)]
  if bad.size:
    raise UserInputError(f'targets {sorted(set(bad.tolist()))} are out of range: the model has {limit} classes')
