"""The figures of `--mode explain`, built with matplotlib's object API (no pyplot).

Images are uint8 (H, W, C) with C 1 or 3; maps are floats in [0, 1] at the image size. Titles are green
for a right prediction and red for a wrong one.
"""
import dataclasses
import math
import textwrap

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from fpclass.explain.cam import METHODS

RIGHT, WRONG = '#1a7f37', '#cf222e'
PANEL_INCHES = 1.5
TITLE_BAND_INCHES = 0.5
HEADING_INCHES = 0.35
LINE_SPACING = 1.3  # a text line's height in points per point of font size, for the wrapped-title bands


@dataclasses.dataclass
class Tile:
  image: np.ndarray  # uint8 (H, W, C)
  title: str
  correct: bool


def overlay(image_u8: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
  """The image in grey (or colour) under a jet colour map of `heat`, as RGB floats in [0, 1]."""
  rgb = as_rgb(image_u8)
  return (1.0 - alpha) * rgb + alpha * matplotlib.colormaps['jet'](np.clip(heat, 0.0, 1.0))[..., :3]


def deprocess_gradients(gradients: np.ndarray) -> np.ndarray:
  """Input-space gradients (H, W, C) as an image: standardised, scaled to 0.1 std around grey, clipped
  (pytorch-grad-cam's `deprocess_image`)."""
  g = gradients - gradients.mean()
  g = g / (g.std() + 1e-5) * 0.1 + 0.5
  return as_rgb(np.clip(g, 0.0, 1.0))


def cam_grid(tiles, maps, guided, alpha: float, method: str, layer: str, columns: int = 10,
             wrap: int | None = None) -> Figure:
  """One column per image: the input, its CAM overlay and (if `guided` is given) Guided Grad-CAM. `wrap`:
  wrap the titles at this many characters (multi-label tag lists), the band above each block fitting them."""
  panels = []
  for i, tile in enumerate(tiles):
    column = [as_rgb(tile.image), overlay(tile.image, maps[i], alpha)]
    if guided is not None:
      column.append(deprocess_gradients(guided[i]))
    panels.append(column)
  labels = ['input', f'{METHODS[method]} ({layer})', 'Guided Grad-CAM'][:len(panels[0])]
  return mosaic_figure(panels, tiles, labels, columns, fontsize=7, wrap=wrap)


def inference_grid(tiles, columns: int = 8, right_means: str = 'right', wrap: int | None = None) -> Figure:
  """The inference grid: each image titled with its prediction, green if right, red if wrong. `right_means`
  names what a green title means in the heading (multi-label: 'with every tag right'); `wrap` as `cam_grid`."""
  right = sum(t.correct for t in tiles)
  return mosaic_figure([[as_rgb(t.image)] for t in tiles], tiles, None, columns, fontsize=8,
                        heading=f'{right} of {len(tiles)} {right_means} (green), {len(tiles) - right} wrong (red)',
                        wrap=wrap)


def contact_sheet(tiles, heading: str, columns: int = 8, wrap: int = 22) -> Figure:
  """Images to look at in order (--mode label_next's first picks), each under its title: green for one to label,
  red (`Tile.correct` False) for one like none of the classes."""
  return mosaic_figure([[as_rgb(t.image)] for t in tiles], tiles, None, columns, fontsize=7, heading=heading,
                       wrap=wrap)


@dataclasses.dataclass
class LabelMap:
  """One label's CAM of an image: the map (H, W) in [0, 1], its caption, and whether the model is right
  about that label (green) or not (red)."""
  heat: np.ndarray
  caption: str
  correct: bool


def label_cam_rows(rows, alpha: float, method: str, layer: str, wrap: int = 26) -> Figure:
  """Multi-label CAM rows: per image (a `Tile`), its input and one overlay per explained label (`LabelMap`s),
  left to right; each panel is captioned above, in green or red. Drawn as one image in one axes with the
  texts on top, as `mosaic_figure` does, so it is saved untrimmed."""
  height, width = rows[0][0].image.shape[:2]
  columns = 1 + max(len(maps) for _, maps in rows)
  texts = [[_wrapped(tile.title, wrap)] + [_wrapped(m.caption, wrap) for m in maps] for tile, maps in rows]
  lines = max(t.count('\n') + 1 for row in texts for t in row)
  pixels_per_inch = width / PANEL_INCHES
  gap = max(1, round(0.04 * width))
  band = round((lines * 7 * LINE_SPACING / 72 + 0.1) * pixels_per_inch)   # `lines` lines of 7-point text per row
  row_height = band + height + gap
  canvas = np.ones((len(rows) * row_height, columns * (width + gap) - gap, 3), np.float32)
  for r, (tile, maps) in enumerate(rows):
    y = r * row_height + band
    panels = [as_rgb(tile.image)] + [overlay(tile.image, m.heat, alpha) for m in maps]
    for c, panel in enumerate(panels):
      canvas[y:y + height, c * (width + gap):c * (width + gap) + width] = panel
  top = HEADING_INCHES
  fig = Figure(figsize=(canvas.shape[1] / pixels_per_inch, top + canvas.shape[0] / pixels_per_inch))
  height_in = fig.get_figheight()
  ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - top / height_in))
  fig.suptitle(f'input, then {METHODS[method]} ({layer}) of each explained label', y=1.0 - 0.5 * top / height_in,
               va='center', fontsize=10)
  ax.imshow(canvas, interpolation='nearest', aspect='auto')
  ax.set_axis_off()
  for r, (tile, maps) in enumerate(rows):
    colours = [tile.correct] + [m.correct for m in maps]
    for c, (text, correct) in enumerate(zip(texts[r], colours)):
      ax.text(c * (width + gap) + width / 2, r * row_height + band - 2, text, ha='center', va='bottom',
              fontsize=7, color=RIGHT if correct else WRONG)
  return fig


def mosaic_figure(panels, tiles, row_labels, columns: int, fontsize: int, heading: str = '',
                   wrap: int | None = None) -> Figure:
  """Tiles in blocks of `columns`, each tile a column of equally sized RGB panels under its title, drawn as
  ONE image in one axes with the titles as text, and `heading` in a band above. An axes per panel (173 for a
  footprint job's CAM grids) cost seconds to build and draw on a CPU; one image and its texts cost a fraction
  of that. Everything lies inside the figure, so it is saved untrimmed (drawn once). With `wrap`, the titles
  are wrapped at that many characters and the band grows to hold the longest."""
  titles = [t.title if wrap is None else _wrapped(t.title, wrap) for t in tiles]
  height, width = panels[0][0].shape[:2]
  per_tile, n = len(panels[0]), len(panels)
  columns = min(columns, n)
  blocks = math.ceil(n / columns)
  pixels_per_inch = width / PANEL_INCHES
  gap = max(1, round(0.04 * width))
  band = round(TITLE_BAND_INCHES * pixels_per_inch)   # three lines of 7-point text above each block
  if wrap is not None:
    lines = max(title.count('\n') + 1 for title in titles)
    band = max(band, round((lines * fontsize * LINE_SPACING / 72 + 0.1) * pixels_per_inch))
  block_height = band + per_tile * (height + gap)
  canvas = np.ones((blocks * block_height, columns * (width + gap) - gap, 3), np.float32)
  for i, column in enumerate(panels):
    block, c = divmod(i, columns)
    x, y = c * (width + gap), block * block_height + band
    for r, panel in enumerate(column):
      canvas[y + r * (height + gap):y + r * (height + gap) + height, x:x + width] = panel
  left = 0.3 if row_labels else 0.0   # inches for the row labels
  top = HEADING_INCHES if heading else 0.0
  fig = Figure(figsize=(left + canvas.shape[1] / pixels_per_inch, top + canvas.shape[0] / pixels_per_inch))
  width_in, height_in = fig.get_figwidth(), fig.get_figheight()
  ax = fig.add_axes((left / width_in, 0.0, 1.0 - left / width_in, 1.0 - top / height_in))
  if heading:
    fig.suptitle(heading, y=1.0 - 0.5 * top / height_in, va='center', fontsize=10)
  ax.imshow(canvas, interpolation='nearest', aspect='auto')
  ax.set_axis_off()
  for i, (tile, title) in enumerate(zip(tiles, titles)):
    block, c = divmod(i, columns)
    ax.text(c * (width + gap) + width / 2, block * block_height + band - 2, title, ha='center', va='bottom',
            fontsize=fontsize, color=RIGHT if tile.correct else WRONG)
  for block in range(blocks if row_labels else 0):
    for r, label in enumerate(row_labels):
      ax.text(-4, block * block_height + band + r * (height + gap) + height / 2, label, rotation=90, ha='right',
              va='center', fontsize=7, clip_on=False)
  return fig


def feature_map_grid(image_u8: np.ndarray, features: dict, title: str, max_channels: int,
                     columns: int = 8) -> Figure:
  """Feature maps (h, w, C) by name: per map, a mosaic of its first `max_channels`
  channels, each standardised on its own (x - mean) / std, so a weak channel still shows its pattern."""
  mosaics = {name: _channel_mosaic(np.asarray(value), max_channels, columns) for name, value in features.items()}
  width = 1.2 * columns
  heights = [width * m.shape[0] / m.shape[1] + 0.35 for m in mosaics.values()]
  image_height = 1.8
  fig = Figure(figsize=(width, image_height + sum(heights) + 0.3))
  grid = fig.add_gridspec(1 + len(mosaics), 1, height_ratios=[image_height, *heights], hspace=0.15,
                          left=0.01, right=0.99, top=0.95, bottom=0.01)
  ax = fig.add_subplot(grid[0])
  ax.imshow(as_rgb(image_u8), interpolation='nearest')
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


def _wrapped(text: str, width: int) -> str:
  """Each line of `text` wrapped at `width` characters (long tag lists stay within their panel)."""
  return '\n'.join(part for line in text.split('\n') for part in (textwrap.wrap(line, width) or ['']))


def as_rgb(image: np.ndarray) -> np.ndarray:
  """uint8 or [0, 1] float (H, W, C) with C 1 or 3 -> float RGB (H, W, 3) in [0, 1]."""
  image = np.asarray(image)
  image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
