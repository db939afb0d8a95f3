"""Pretrained weights from the source framework's own files, mapped strictly onto Flax variables.

- torchvision: a `state_dict` saved with `torch.save` (.pth/.pt; torch is needed only to unpickle it)
  or a .safetensors file.
- Keras: `.weights.h5` (Keras 3, layers keyed by class and index in `model.layers` order: `conv2d_3`) or
  legacy `.h5` (Keras 2 and the official ImageNet files, keyed by layer name), read with h5py; no
  TensorFlow. `model.layers` of a branching functional model is not in creation order: see keras_graph.py.

Each family converts the file into `{(collection, *flax_path): array}` with an explicit table; `assign`
then requires every model variable to be filled and every file tensor to be used, checks every shape, and
lists what is missing, unexpected or mis-shaped. The source classifier's last layer is dropped by a named
rule (`ModelSpec.source_head`) unless `config.model.keep_pretrained_head` asks to keep it.
"""
import dataclasses
import hashlib
import os
import pathlib
import re
import shutil
import urllib.error
import urllib.request
from typing import Callable, Iterable

import numpy as np
from flax import traverse_util

from fpclass import fileio
from fpclass.errors import UserInputError

MAX_LISTED = 8


# ----------------------------------------------------------------------------------------------- reading

def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A torchvision state_dict as {name: float32 array}, from .pth/.pt (torch.save) or .safetensors."""
  path = _existing(path)
  try:
    if path.suffix == '.safetensors':
      from safetensors.numpy import load_file
      tensors = load_file(str(path))
    else:
      import torch
      loaded = torch.load(str(path), map_location='cpu', weights_only=True)
      if isinstance(loaded, dict) and 'state_dict' in loaded and isinstance(loaded['state_dict'], dict):
        loaded = loaded['state_dict']
      if not isinstance(loaded, dict) or not all(hasattr(v, 'numpy') for v in loaded.values()):
        raise UserInputError(f'{path}: not a state_dict (a mapping of tensor names to tensors)')
      tensors = {k: v.detach().cpu().numpy() for k, v in loaded.items()}
  except UserInputError:
    raise
  except ImportError as e:
    raise UserInputError(f'{path}: reading it needs {e.name}; pip install {e.name}') from None
  except Exception as e:  # torch raises a zoo of types for a truncated or foreign file
    raise UserInputError(f'{path}: cannot read it as a weights file (truncated or not a state_dict?): '
                         f'{type(e).__name__}: {str(e)[:300]}') from None
  return {k: np.asarray(v) for k, v in tensors.items()}


KERAS_CLASS_KEYS = {  # Keras 3 names each saved layer after its class, snake-cased, plus an index
    'Conv2D': 'conv2d', 'Dense': 'dense', 'BatchNormalization': 'batch_normalization',
    'DepthwiseConv2D': 'depthwise_conv2d', 'Normalization': 'normalization',
}


@dataclasses.dataclass(frozen=True)
class KerasLayer:
  """One weighted Keras layer: its name, class, and the Flax module path. Tables list them in the order of
  the Keras model's `layers` (fpclass.models.keras_graph computes it for branching models)."""
  name: str
  cls: str
  flax: str


def read_keras_weights(path: str | os.PathLike, layers: Iterable[KerasLayer],
                       optional: Iterable[str] = ()) -> dict[str, list[np.ndarray]]:
  """{flax module path: [variables in Keras order]} for `layers`, from either Keras file layout.

  `optional` lists Flax paths a file may lack (the source classifier, absent from include_top=False
  files). Raises UserInputError listing layers the file lacks and layers the file has that `layers` does not.
  """
  import h5py
  path = _existing(path)
  layers, optional = list(layers), set(optional)
  try:
    with h5py.File(path, 'r') as f:
      if 'layers' in f and isinstance(f['layers'], h5py.Group) and 'layer_names' not in f.attrs:
        found, extra = _read_keras3(f['layers'], layers)
      else:
        found, extra = _read_legacy(f['model_weights'] if 'model_weights' in f else f, layers, optional)
  except UserInputError:
    raise
  except (OSError, KeyError, ValueError) as e:
    raise UserInputError(f'{path}: cannot read it as a Keras weights file (truncated or not HDF5?): '
                         f'{type(e).__name__}: {str(e)[:300]}') from None
  missing = [layer.name for layer in layers if layer.flax not in found and layer.flax not in optional]
  if missing or extra:
    raise UserInputError(f'{path} does not fit this architecture: ' + _listing('missing layers', missing)
                         + _listing('unexpected layers', extra))
  return found


def _read_keras3(group, layers):
  counters, found = {}, {}
  expected = set()
  for layer in layers:
    base = KERAS_CLASS_KEYS[layer.cls]
    index = counters.get(base, 0)
    counters[base] = index + 1
    key = base if index == 0 else f'{base}_{index}'
    expected.add(key)
    if key in group and 'vars' in group[key]:
      variables = group[key]['vars']
      found[layer.flax] = [np.asarray(variables[str(i)]) for i in range(len(variables))]
  extra = sorted(k for k in group if k not in expected and len(group[k].get('vars', {})))
  return found, extra


def _read_legacy(group, layers, optional):
  def values(g):
    names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs.get('weight_names', [])]
    return [np.asarray(g[n]) for n in names]
  saved = [n.decode() if isinstance(n, bytes) else n for n in group.attrs.get('layer_names', list(group))]
  weighted = [n for n in saved if len(group[n].attrs.get('weight_names', []))]
  required = [layer for layer in layers if layer.flax not in optional]
  if any(layer.name not in group for layer in required) and len(weighted) in (len(layers), len(required)):
    # Keras itself loads legacy files by order (load_weights_from_hdf5_group), so files whose unnamed
    # layers carry other auto-names (conv2d_1 vs conv2d) still load; assign() then checks every shape.
    chosen = layers if len(weighted) == len(layers) else required
    return {layer.flax: values(group[n]) for layer, n in zip(chosen, weighted)}, []
  found = {layer.flax: values(group[layer.name]) for layer in layers if layer.name in group}
  wanted = {layer.name for layer in layers}
  extra = sorted(n for n in weighted if n not in wanted)
  return found, extra


# --------------------------------------------------------------------------------------------- mapping

@dataclasses.dataclass(frozen=True)
class Rule:
  """Source names matching `pattern` go to the Flax path `target` (a format string over the match's
  groups, '/'-joined, starting with the collection), transformed by `kind`."""
  pattern: str
  target: str
  kind: str = 'vector'


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    'vector': lambda a: a,
    'conv': lambda a: np.transpose(a, (2, 3, 1, 0)),          # torch OIHW -> flax HWIO
    'linear': lambda a: np.transpose(a, (1, 0)),              # torch (out, in) -> flax (in, out)
    'depthwise': lambda a: np.transpose(a, (2, 3, 1, 0)),     # torch (C, 1, kh, kw) -> flax (kh, kw, 1, C)
    'keras_depthwise': lambda a: a.reshape(a.shape[0], a.shape[1], 1, -1),  # (kh, kw, C, 1) -> (kh, kw, 1, C)
    'flatten': lambda a: a.reshape(-1),                       # torch (C, 1, 1) per-channel scales -> (C,)
    'pointwise': lambda a: a.reshape(a.shape[0], -1).T,       # torch (out, in[, 1, 1]) -> flax Dense (in, out)
}

# torchvision BatchNorm2d: weight/bias are params, running statistics go to batch_stats.
TORCH_BN = (('weight', 'params/{}/scale'), ('bias', 'params/{}/bias'), ('running_mean', 'batch_stats/{}/mean'),
            ('running_var', 'batch_stats/{}/var'))
TORCH_IGNORED = r'.*num_batches_tracked$'


def torch_bn_rules(source: str, target: str) -> tuple:
  """The rules of one torch BatchNorm: tensors `source`.{weight, bias, running_mean, running_var} (a regex; its
  groups fill `target`'s {0}, {1}, ...) to the Flax BatchNorm at `target`'s scale, bias, mean and var."""
  return tuple(Rule(rf'{source}\.{src}', dst.format(target)) for src, dst in TORCH_BN)


def apply_rules(tensors: dict[str, np.ndarray], rules: Iterable[Rule], ignore: str = TORCH_IGNORED):
  """Maps source tensors through `rules` (first match wins): ({flax path tuple: array}, unmatched names)."""
  rules = [(re.compile(r.pattern), r) for r in rules]
  mapped, unmatched = {}, []
  for name, array in tensors.items():
    if ignore and re.fullmatch(ignore, name):
      continue
    for regex, rule in rules:
      m = regex.fullmatch(name)
      if m:
        mapped[tuple(rule.target.format(*m.groups()).split('/'))] = TRANSFORMS[rule.kind](array)
        break
    else:
      unmatched.append(name)
  return mapped, unmatched


def keras_mapped(found: dict[str, list[np.ndarray]], kinds: dict[str, str]) -> dict[tuple, np.ndarray]:
  """{flax module path: [Keras variables]} -> {(collection, *path): array} by layer kind."""
  mapped = {}
  for module, values in found.items():
    kind = kinds[module]
    path = tuple(module.split('/'))
    if kind == 'bn':  # gamma, beta, moving_mean, moving_variance (gamma/beta absent when scale/center off)
      names = {4: ('scale', 'bias'), 3: ('bias',), 2: ()}[len(values)]
      for name, value in zip(names, values):
        mapped[('params', *path, name)] = value
      mapped[('batch_stats', *path, 'mean')] = values[-2]
      mapped[('batch_stats', *path, 'var')] = values[-1]
    elif kind == 'normalization':  # Keras Normalization: mean, variance, count (count unused). Keras does
      # not train them, so they are state (batch_stats) that neither the optimizer nor weight decay touches.
      mapped[('batch_stats', *path, 'mean')] = values[0].reshape(-1)
      mapped[('batch_stats', *path, 'variance')] = values[1].reshape(-1)
    else:  # conv, dense, depthwise: kernel [, bias]
      mapped[('params', *path, 'kernel')] = TRANSFORMS['keras_depthwise'](values[0]) if kind == 'depthwise' \
          else values[0]
      if len(values) > 1:
        mapped[('params', *path, 'bias')] = values[1]
  return mapped


WEIGHT_COLLECTIONS = ('params', 'batch_stats')


def assign(variables: dict, mapped: dict[tuple, np.ndarray], *, source: str, keep: str = '',
           unmatched: Iterable[str] = ()) -> dict:
  """Returns `variables` with every params and batch_stats leaf replaced by its mapped array.

  Strict: a model leaf with no array (unless its path matches the regex `keep`, e.g. a new head), an
  array with no model leaf, a file tensor no rule used, or a shape difference is an error naming them.
  Other collections hold no weights (the 'perturbations' that `model.init` also returns): they pass
  through unchanged.
  """
  weighted = {k: v for k, v in variables.items() if k in WEIGHT_COLLECTIONS}
  flat = traverse_util.flatten_dict(weighted)
  keep_re = re.compile(keep) if keep else None
  kept = {k for k in flat if keep_re and keep_re.search('/'.join(k))}
  missing = ['/'.join(k) for k in flat if k not in mapped and k not in kept]
  unexpected = ['/'.join(k) for k in mapped if k not in flat] + list(unmatched)
  mismatched = [f'{"/".join(k)}: file {mapped[k].shape}, model {tuple(flat[k].shape)}'
                for k in flat if k in mapped and tuple(mapped[k].shape) != tuple(flat[k].shape)]
  if missing or unexpected or mismatched:
    raise UserInputError(f'{source} does not fit this model: ' + _listing('missing', missing)
                         + _listing('unexpected', unexpected) + _listing('shape mismatch', mismatched)
                         + ' (is it the weights file of this architecture?)')
  out = traverse_util.unflatten_dict(
      {k: (flat[k] if k in kept else np.asarray(mapped[k], np.float32)) for k in flat})
  # A collection with no leaves (the batch_stats of a model without BatchNorm) stays, empty.
  return {**{k: v for k, v in variables.items() if k not in out}, **out}


def fold_rgb_stem(kernel: np.ndarray, norm) -> tuple[np.ndarray, np.ndarray]:
  """Folds an RGB first-conv kernel (kh, kw, 3, out) for one-channel input: (kernel (kh, kw, 1, out), offset).

  The RGB model sees channel c as (g - m_c) / s_c; the folded model sees (g - m) / s with m, s the channel
  averages (`norm.to_grayscale()`). Then W' = sum_c W_c * s / s_c reproduces the RGB model on [g, g, g] up
  to offset = sum over the kernel's taps of `rgb_stem_tap_offsets`, a constant per output channel, which the
  caller adds to the conv bias or subtracts from the following BN mean. That constant is exact where the
  kernel lies inside the image; at a zero-padded tap the source framework sees 0 (it pads after
  normalising), so that tap's share must come off again: `fpclass.models.transfer.StemConv` does it.
  Channel order follows `norm` (BGR for Keras caffe models).
  """
  std = np.asarray(norm.std, np.float64)
  s = norm.to_grayscale().std[0]
  k = kernel.astype(np.float64)
  folded = np.sum(k * (s / std)[None, None, :, None], axis=2, keepdims=True)
  offset = np.sum(_tap_offsets(kernel, norm), axis=(0, 1))
  return folded.astype(np.float32), offset.astype(np.float32)


def rgb_stem_tap_offsets(kernel: np.ndarray, norm) -> np.ndarray:
  """Each tap's share of `fold_rgb_stem`'s offset, (kh, kw, 1, out): sum_c W_c[tap] * (m - m_c) / s_c.

  All zero when every channel shares one mean (the std may differ: it only rescales the kernel)."""
  return _tap_offsets(kernel, norm)[:, :, None, :].astype(np.float32)


def _tap_offsets(kernel, norm) -> np.ndarray:
  mean, std = np.asarray(norm.mean, np.float64), np.asarray(norm.std, np.float64)
  m = norm.to_grayscale().mean[0]
  return np.einsum('hwco,c->hwo', kernel.astype(np.float64), (m - mean) / std)


def _listing(what, names) -> str:
  if not names:
    return ''
  shown = ', '.join(names[:MAX_LISTED]) + (f' and {len(names) - MAX_LISTED} more' if len(names) > MAX_LISTED else '')
  return f'[{len(names)} {what}: {shown}] '


def _existing(path) -> pathlib.Path:
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise UserInputError(f'{path}: weights file not found')
  if path.stat().st_size == 0:
    raise UserInputError(f'{path}: weights file is empty (zero bytes)')
  return path


# ----------------------------------------------------------------------------------- download and cache

@dataclasses.dataclass(frozen=True)
class WeightsFile:
  """A canonical weights URL and its checksum: 'sha256:<hex or hex prefix>' or 'md5:<hex>'."""
  url: str
  checksum: str

  @property
  def filename(self) -> str:
    return self.url.rsplit('/', 1)[-1]

  def cached_path(self, cache_dir: str | os.PathLike) -> pathlib.Path:
    """Where it is kept under the cache folder `cache_dir`: <cache_dir>/weights/<its file name>."""
    return pathlib.Path(cache_dir).expanduser() / 'weights' / self.filename

  def fetch_to(self, dest: pathlib.Path) -> pathlib.Path:
    """`dest`, verified against the checksum; downloaded from the URL first (atomically) unless it is there."""
    if dest.exists():
      if verify_checksum(dest, self.checksum):
        return dest
      raise UserInputError(f'{dest}: cached weights fail their checksum {self.checksum}; move the file away '
                           'and run again to download it afresh')
    try:
      with urllib.request.urlopen(self.url, timeout=60) as response, fileio.atomic_path(dest) as tmp:
        with open(tmp, 'wb') as out:
          shutil.copyfileobj(response, out)
        if not verify_checksum(tmp, self.checksum):
          raise UserInputError(f'{self.url}: the download fails its checksum {self.checksum}')
    except (urllib.error.URLError, OSError, TimeoutError) as e:
      raise UserInputError(f'cannot download {self.url} ({type(e).__name__}: {e}). Without internet, get the '
                           f'file elsewhere and pass --config.model.pretrained=/path/to/{self.filename}') from None
    return dest


def verify_checksum(path: pathlib.Path, checksum: str) -> bool:
  algorithm, _, expected = checksum.partition(':')
  digest = hashlib.new(algorithm)
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest().startswith(expected.lower())


