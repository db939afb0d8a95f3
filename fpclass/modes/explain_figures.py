"""The figures of `--mode explain`, built with matplotlib's object API (no pyplot).

Images are uint8 (H, W, C) with C 1 or 3; maps are floats in [0, 1] at the image size. Titles are green
for a right prediction and red for a wrong one.
"""
import dataclasses
import math

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from fpclass.cam import METHODS

RIGHT, WRONG = '#1a7f37', '#cf222e'
PANEL_INCHES = 1.5


@dataclasses.dataclass
class Tile:
  image: np.ndarray  # uint8 (H, W, C)
  title: str
  correct: bool


def overlay(image_u8: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
  """The image in grey (or colour) under a jet colour map of `heat`, as RGB floats in [0, 1]."""
  rgb = _as_rgb(image_u8)
  return (1.0 - alpha) * rgb + alpha * matplotlib.colormaps['jet'](np.clip(heat, 0.0, 1.0))[..., :3]


def deprocess_gradients(gradients: np.ndarray) -> np.ndarray:
  """Input-space gradients (H, W, C) as an image: standardised, scaled to 0.1 std around grey, clipped
  (pytorch-grad-cam's `deprocess_image`)."""
  g = gradients - gradients.mean()
  g = g / (g.std() + 1e-5) * 0.1 + 0.5
  return _as_rgb(np.clip(g, 0.0, 1.0))


def cam_grid(tiles, maps, guided, alpha: float, method: str, layer: str, columns: int = 10) -> Figure:
  """One column per image: the input, its CAM overlay and (if `guided` is given) Guided Grad-CAM.

  Laid out by hand (a title band above each block of rows) rather than by matplotlib's constrained
  layout, which takes seconds per grid on a CPU machine.
  """
  panel_rows = 2 + (guided is not None)
  n = len(tiles)
  columns = min(columns, n)
  blocks = math.ceil(n / columns)
  panel_height = PANEL_INCHES * tiles[0].image.shape[0] / tiles[0].image.shape[1]
  title_band = 0.5  # inches, three lines of 7-point text
  heights = [title_band if r == 0 else panel_height for _ in range(blocks) for r in range(panel_rows + 1)]
  fig = Figure(figsize=(0.3 + PANEL_INCHES * columns, sum(heights)))
  grid = fig.add_gridspec(len(heights), columns, height_ratios=heights, hspace=0.04, wspace=0.04,
                          left=0.25 / (0.3 + PANEL_INCHES * columns), right=1.0, top=1.0, bottom=0.0)
  labels = ['input', f'{METHODS[method]} ({layer})', 'Guided Grad-CAM'][:panel_rows]
  for i, tile in enumerate(tiles):
    block, column = divmod(i, columns)
    panels = [_as_rgb(tile.image), overlay(tile.image, maps[i], alpha)]
    if guided is not None:
      panels.append(deprocess_gradients(guided[i]))
    for r, panel in enumerate(panels):
      ax = fig.add_subplot(grid[block * (panel_rows + 1) + 1 + r, column])
      _blank(ax)
      ax.imshow(panel, interpolation='nearest')
      if r == 0:
        ax.set_title(tile.title, fontsize=7, color=RIGHT if tile.correct else WRONG)
      if column == 0:
        ax.set_ylabel(labels[r], fontsize=7)
  return fig


def inference_grid(tiles, columns: int = 8) -> Figure:
  """Seed 002's inference grid: each image titled with its prediction, green if right, red if wrong."""
  n = len(tiles)
  columns = min(columns, n)
  rows = math.ceil(n / columns)
  aspect = tiles[0].image.shape[0] / tiles[0].image.shape[1]
  fig = Figure(figsize=(PANEL_INCHES * columns, rows * (PANEL_INCHES * aspect + 0.5)), layout='constrained')
  axes = np.asarray(fig.subplots(rows, columns, squeeze=False))
  for ax in axes.ravel():
    ax.set_axis_off()
  for ax, tile in zip(axes.ravel(), tiles):
    ax.imshow(_as_rgb(tile.image), interpolation='nearest')
    ax.set_title(tile.title, fontsize=8, color=RIGHT if tile.correct else WRONG)
  right = sum(t.correct for t in tiles)
  fig.suptitle(f'{right} of {n} right (green), {n - right} wrong (red)', fontsize=10)
  return fig


def feature_map_grid(image_u8: np.ndarray, features: dict, title: str, max_channels: int,
                     columns: int = 8) -> Figure:
  """Seed 003's view of feature maps (h, w, C) by name: per map, a mosaic of its first `max_channels`
  channels, each standardised on its own (x - mean) / std, so a weak channel still shows its pattern."""
  mosaics = {name: _channel_mosaic(np.asarray(value), max_channels, columns) for name, value in features.items()}
  width = 1.2 * columns
  heights = [width * m.shape[0] / m.shape[1] + 0.35 for m in mosaics.values()]
  image_height = 1.8
  fig = Figure(figsize=(width, image_height + sum(heights) + 0.3))
  grid = fig.add_gridspec(1 + len(mosaics), 1, height_ratios=[image_height, *heights], hspace=0.15,
                          left=0.01, right=0.99, top=0.95, bottom=0.01)
  ax = fig.add_subplot(grid[0])
  ax.imshow(_as_rgb(image_u8), interpolation='nearest')
  ax.set_axis_off()
  ax.set_title('input', fontsize=8)
  cmap = matplotlib.colormaps['viridis'].with_extremes(bad='white')
  for row, (name, mosaic) in enumerate(mosaics.items(), start=1):
    ax = fig.add_subplot(grid[row])
    ax.imshow(mosaic, cmap=cmap, interpolation='nearest', vmin=-2.5, vmax=2.5)
    ax.set_axis_off()
    shape = features[name].shape
    shown = shape[-1] if shape[-1] <= max_channels else f'the first {max_channels} of {shape[-1]}'
    ax.set_title(f'{name}: {shown} channels of {shape[0]}x{shape[1]}', fontsize=8)
  fig.suptitle(title, fontsize=9)
  return fig


def _channel_mosaic(feature_map: np.ndarray, max_channels: int, columns: int) -> np.ndarray:
  """Channels tiled row by row, each standardised, separated by NaN (drawn white)."""
  h, w, c = feature_map.shape
  channels = min(c, max_channels)
  columns = min(columns, channels)
  rows = math.ceil(channels / columns)
  mosaic = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), np.nan, np.float32)
  for k in range(channels):
    x = feature_map[..., k].astype(np.float32)
    x = (x - x.mean()) / (x.std() + 1e-6)
    r, col = divmod(k, columns)
    mosaic[r * (h + 1):r * (h + 1) + h, col * (w + 1):col * (w + 1) + w] = x
  return mosaic


def _blank(ax) -> None:
  """No ticks or frame, but unlike `set_axis_off` the y label (a row's name) still shows."""
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_visible(False)


def _as_rgb(image: np.ndarray) -> np.ndarray:
  """uint8 or [0, 1] float (H, W, C) with C 1 or 3 -> float RGB (H, W, 3) in [0, 1]."""
  image = np.asarray(image)
  image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
