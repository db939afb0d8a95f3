"""A restored model's explanations as programs: Grad-CAM (and Guided Grad-CAM) maps and feature maps of uint8
images in fixed-size batches (`Explainer`, built by `build_explainer`), and their overlays as RGB images. Used by
explain, predict and serve alike."""
import dataclasses
import functools
import pathlib

import jax
import numpy as np
from PIL import Image

from fpclass import fileio, models
from fpclass.config.outputs import ExplainSettings
from fpclass.errors import UserInputError
from fpclass.explain import cam
from fpclass.explain import figures as explain_figures
from fpclass.train import checkpoint
from fpclass.train.batches import in_fixed_batches


@dataclasses.dataclass(frozen=True)
class Explainer:
  """A restored model as `fpclass.explain.cam` takes it: apply function, variables, layer, settings."""
  apply_fn: object
  guided_apply_fn: object | None
  variables: dict
  layer: str
  settings: ExplainSettings
  prepare: object  # uint8 images -> the model's normalised input

  @functools.cached_property
  def _explain(self):
    return cam.explanation_program(self.apply_fn, self.layer, self.settings.method, self.guided_apply_fn,
                                   self.prepare)

  @functools.cached_property
  def _feature_maps(self):
    return cam.feature_maps_program(self.apply_fn, self.prepare)

  def maps(self, images_u8: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(CAM maps (N, H, W), Guided Grad-CAM (N, H, W, C) or None) of N >= 1 images, in fixed-size padded
    batches, so one compiled program (uint8 in, both maps out) serves every batch and figure."""
    batch = min(self.settings.batch_size, len(images_u8))
    return in_fixed_batches(lambda chunk, chunk_targets: self._explain(self.variables, chunk, chunk_targets),
                            (images_u8, np.asarray(targets, np.int32)), (batch,))

  def pair_maps(self, images_u8: np.ndarray, pairs) -> dict:
    """{(image index, class index): (CAM map (H, W), Guided Grad-CAM (H, W, C) or None)} for each distinct
    pair: the map of that class's score (its logit: the gradient `maps` pulls back is the class's one-hot
    row), so a multi-label image gets one map per label it is explained for. One batched `maps` pass for
    all the pairs, an image repeated once per label."""
    pairs = sorted({(int(i), int(k)) for i, k in pairs})
    if not pairs:
      return {}
    index, targets = (np.array(column) for column in zip(*pairs))
    maps, guided = self.maps(images_u8[index], targets)
    return {pair: (maps[r], None if guided is None else guided[r]) for r, pair in enumerate(pairs)}

  def feature_maps(self, images_u8: np.ndarray) -> dict:
    """Every recorded feature map of `images_u8`, by name, on the host."""
    return jax.device_get(self._feature_maps(self.variables, images_u8))


def build_explainer(trained, settings: ExplainSettings, image_shape) -> Explainer:
  """Grad-CAM (and guided backprop) over a restored model, at config.explain.layer or the model's default
  layer, checked before any image is decoded."""
  model = trained.task.model
  variables = checkpoint.model_variables(trained.state)
  model_name = trained.settings.model.name
  layer = settings.layer or default_layer(model.apply, variables, image_shape, model_name)
  if settings.layer:
    try:
      cam.check_layer(model.apply, variables, image_shape, layer)
    except UserInputError as e:
      raise UserInputError(f'config.explain.layer={layer!r}: {e}') from None
  guided_apply_fn = None
  if settings.guided:
    try:
      guided_apply_fn = cam.guided_model(model).apply
    except UserInputError as e:
      raise UserInputError(f'config.explain.guided=True: {e}; or set --config.explain.guided=False') from None
  return Explainer(model.apply, guided_apply_fn, variables, layer, settings, trained.task.prepare)


def overlay_rgb(image_u8: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
  """The Grad-CAM overlay of one image as uint8 RGB (H, W, 3)."""
  return np.round(np.clip(explain_figures.overlay(image_u8, heat, alpha), 0.0, 1.0) * 255).astype(np.uint8)


def save_png(path: pathlib.Path, rgb: np.ndarray) -> None:
  with fileio.atomic_path(path) as tmp:
    Image.fromarray(rgb, 'RGB').save(tmp, format='PNG')


def default_layer(apply_fn, variables, image_shape, model_name: str) -> str:
  """The model's registered CAM layer, checked; or, when its configured depth leaves that one out (a footprint_cnn
  with one conv layer records no 'conv2'), the last feature map it records: its last conv stage. A registered
  name the model records ambiguously, or a model that records nothing, is an error naming the model."""
  registered = models.get_spec(model_name).cam_layer
  try:
    cam.check_layer(apply_fn, variables, image_shape, registered)
    return registered
  except UserInputError as e:
    layers = cam.feature_layers(apply_fn, variables, image_shape)
    if not layers or registered.split('/')[-1] in {name.split('/')[-1] for name in layers}:
      raise UserInputError(f'the default layer of {model_name!r}: {e}') from None
    return layers[-1]
