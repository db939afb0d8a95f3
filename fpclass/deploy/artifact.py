"""What every exported artifact shares: its input and output names, the fixed images it is checked on, and the
check itself, each output against fpclass's own answer before the file is kept (`fpclass.deploy.export` writes
StableHLO, `fpclass.deploy.onnx_export` ONNX).
"""
import jax
import jax.numpy as jnp
import numpy as np

from fpclass.errors import UserInputError

INPUT_NAME, OUTPUT_NAME = 'images', 'logits'
OOD_OUTPUT_NAME = 'ood_score'
TOLERANCE = 1e-4  # the check after writing, relative to the largest logit; tests hold parity to 1e-5


def probe_images(image_shape, n: int = 2) -> np.ndarray:
  """Fixed random images the written files are checked on."""
  return np.random.default_rng(0).integers(0, 256, (n, *image_shape), dtype=np.uint8)


def input_spec(image_shape, batch_size: int) -> jax.ShapeDtypeStruct:
  batch = batch_size or jax.export.symbolic_shape('batch')[0]
  return jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8)


def check_images(images: np.ndarray, batch_size: int) -> np.ndarray:
  """The probe images a fixed-batch artifact accepts: the first `batch_size`, repeated as needed."""
  if not batch_size:
    return images
  return np.resize(images, (batch_size, *images.shape[1:]))


def _check(name: str, got: np.ndarray, expected: np.ndarray) -> float:
  """The largest difference from fpclass's logits; an error when it is over TOLERANCE (relative)."""
  got = np.asarray(got)
  if got.shape != expected.shape:
    raise UserInputError(f'{name}: the exported model returns shape {got.shape}, fpclass {expected.shape}')
  difference = float(np.max(np.abs(got - expected))) if got.size else 0.0
  scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
  if not difference <= TOLERANCE * scale:
    raise UserInputError(f'{name}: the exported model differs from fpclass by {difference:.3g} on the check '
                         f'images (tolerance {TOLERANCE * scale:.3g}); nothing was written')
  return difference


def expected_at(expected, batch_size: int):
  if isinstance(expected, tuple):
    return tuple(expected_at(e, batch_size) for e in expected)
  return np.resize(expected, (batch_size, *expected.shape[1:])) if batch_size else expected


def check_outputs(name: str, got, expected) -> float:
  """`_check` of each output (one array, or a tuple: the prediction and the OOD score); the largest difference."""
  if not isinstance(expected, tuple):
    return _check(name, got, expected)
  return max(_check(f'{name} ({which})', g, e)
             for which, g, e in zip((OUTPUT_NAME, OOD_OUTPUT_NAME), got, expected))


def first_rows(expected, rows: int):
  return tuple(e[:rows] for e in expected) if isinstance(expected, tuple) else expected[:rows]


def first_sentence(error: BaseException) -> str:
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text.split(". ")[0][:200]}' if text else type(error).__name__


def one_line(error: BaseException) -> str:
  text = ' '.join(str(error).split()) or type(error).__name__
  return f'{type(error).__name__}: {text[:400]}'
