"""How raw pixels become model input: per-channel (x - mean) / std, optionally in BGR order.

Every family's convention is one `Normalisation` in [0, 1] pixel units:
- torchvision: ImageNet mean/std on RGB;
- Keras 'caffe' (VGG16, ResNet50 v1): BGR, minus the ImageNet mean in 0..255, no scaling;
- Keras 'tf' (ResNet50V2, InceptionV3): [-1, 1];
- Keras models with in-model rescaling (MobileNetV3, EfficientNet): raw 0..255, the model does the rest.
Seed CNNs take `config.data.mean/std`. The model registry records each family's, a Hub checkpoint's config.json
its own; `fpclass.models.weights_ref` says which applies to the configured weights, and it is applied on the
device inside the jitted step.
"""
import dataclasses

import jax.numpy as jnp

from fpclass.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class Normalisation:
  mean: tuple          # per channel, in [0, 1] pixel units, in the model's channel order
  std: tuple
  bgr: bool = False    # reverse RGB to BGR before normalising (Keras 'caffe' mode)

  @classmethod
  def from_settings(cls, inputs, channels: int) -> 'Normalisation':
    """config.data.mean and std (`inputs`, an `fpclass.config.inputs.InputSettings`), checked against the data's
    channels. Typed in words only: this module imports no config, so `weights_ref` above it stays shallow."""
    mean, std = inputs.mean, inputs.std
    for key, values in (('mean', mean), ('std', std)):
      if len(values) not in (1, channels):
        raise UserInputError(f'config.data.{key}={values}: give 1 value or {channels} (one per channel)')
    if any(s <= 0 for s in std):
      raise UserInputError(f'config.data.std={std}: every value must be positive')
    return cls(mean, std)

  def to_grayscale(self) -> 'Normalisation':
    """The one-channel normalisation a grayscale-folded RGB stem expects: the channel averages.
    (`fpclass.models.weights.fold_rgb_stem` folds the per-channel differences into the weights.)"""
    return Normalisation((sum(self.mean) / len(self.mean),), (sum(self.std) / len(self.std),))

  def __call__(self, images01):
    if self.bgr and images01.shape[-1] == 3:
      images01 = images01[..., ::-1]
    return (images01 - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)


TORCH_IMAGENET = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Keras caffe mode: x[..., ::-1] - [103.939, 116.779, 123.68] on 0..255 pixels (BGR order).
KERAS_CAFFE = Normalisation((103.939 / 255, 116.779 / 255, 123.68 / 255), (1 / 255,) * 3, bgr=True)
KERAS_TF = Normalisation((0.5,) * 3, (0.5,) * 3)                 # x / 127.5 - 1
RAW_0_255 = Normalisation((0.0,) * 3, (1 / 255,) * 3)            # the model rescales itself
