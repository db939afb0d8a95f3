"""Vision Transformers: torchvision's ViT-B/16 and DINOv2's ViT-S/14 and ViT-B/14, one Flax module; timm's ViTs
(augreg, CLIP's pre-norm, DINOv2 with registers) are its fields, registered by `timm_vit.py`.

`drop_path_rate` is stochastic depth on each block's two branches (torchvision's ViT has none): timm's and
DINOv2's rule, rate linspace(0, p, depth)[i] for block i, each branch drawn on its own, in training only.

Design notes: docs/modules.md (`fpclass/models/architectures/vision_transformer.py`).
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fpclass.errors import UserInputError
from fpclass.models import ModelSpec, feature, preprocessing, register, transfer
from fpclass.models.weights import Rule, WeightsFile, apply_rules, read_state_dict

CUBIC_A = -0.75              # torch's bicubic kernel (Keys' cubic convolution with a = -0.75)
DINOV2_OFFSET = 0.1          # DINOv2's scale-factor offset ("avoid floating point error", kept for its weights)
LAYER_NORM_EPSILON = 1e-6
INTERPOLATIONS = ('torchvision', 'dinov2', 'timm')
AA_CUBIC_A = -0.5           # torch's antialiased bicubic kernel (Pillow's)
CAM_FEATURE = 'last_attention_input'
xavier = nn.initializers.xavier_uniform()


def _cubic_taps(t):
  """Weights of the four taps at offsets -1, 0, 1, 2 from floor(source), for fractional positions `t`."""
  a = CUBIC_A

  def near(x):   # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):    # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(in_size: int, out_size: int, align_corners: bool, scale: float | None = None) -> np.ndarray:
  """(out_size, in_size) float64 matrix M with M @ v = torch's 1-D bicubic interpolation of v.

  Source positions as torch's `interpolate(mode='bicubic')` computes them: with align_corners,
  dst * (in - 1) / (out - 1); without, (dst + 0.5) / scale - 0.5, `scale` being the scale factor given to
  torch, or out / in when only the size is. Taps beyond the border read the border value."""
  dst = np.arange(out_size, dtype=np.float64)
  if align_corners:
    src = dst * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
  else:
    src = (dst + 0.5) * ((1.0 / scale) if scale else in_size / out_size) - 0.5
  base = np.floor(src)
  taps = _cubic_taps(src - base)
  matrix = np.zeros((out_size, in_size))
  for k in range(4):
    np.add.at(matrix, (np.arange(out_size), np.clip(base - 1 + k, 0, in_size - 1).astype(int)), taps[:, k])
  return matrix


def antialiased_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float64 matrix of torch's `interpolate(size=..., mode='bicubic', antialias=True)`
  (what timm's resample_abs_pos_embed calls): Keys' kernel with a = -0.5, widened by the scale when shrinking,
  over the taps inside the input, its weights normalised to sum to 1."""
  scale = in_size / out_size
  support = 2.0 * max(scale, 1.0)
  inverse = 1.0 / scale if scale >= 1.0 else 1.0
  a = AA_CUBIC_A

  def kernel(x):
    x = abs(x)
    if x < 1:
      return ((a + 2) * x - (a + 3)) * x * x + 1
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a if x < 2 else 0.0
  matrix = np.zeros((out_size, in_size))
  for i in range(out_size):
    center = scale * (i + 0.5)
    low = max(int(center - support + 0.5), 0)
    high = min(int(center + support + 0.5), in_size)
    taps = np.array([kernel((j - center + 0.5) * inverse) for j in range(low, high)])
    matrix[i, low:high] = taps / taps.sum()
  return matrix


def position_matrices(source_grid: int, grid: tuple[int, int], how: str) -> tuple[np.ndarray, np.ndarray] | None:
  """(rows, columns) interpolation matrices from the source grid to `grid`, or None when none is needed."""
  if how not in INTERPOLATIONS:
    raise UserInputError(f'config.model.position_interpolation={how!r}: use one of {INTERPOLATIONS}')
  if grid == (source_grid, source_grid):
    return None
  if how == 'torchvision':
    return tuple(bicubic_matrix(source_grid, n, align_corners=True) for n in grid)
  if how == 'timm':
    return tuple(antialiased_bicubic_matrix(source_grid, n) for n in grid)
  return tuple(bicubic_matrix(source_grid, n, align_corners=False, scale=(n + DINOV2_OFFSET) / source_grid)
               for n in grid)


def interpolated_positions(pos_embedding, source_grid: int, grid: tuple[int, int], how: str, prefix: int = 1):
  """The (1, prefix + h * w, D) position embeddings for a (h, w) patch grid; the `prefix` tokens' (the class
  token's) are unchanged."""
  matrices = position_matrices(source_grid, grid, how)
  if matrices is None:
    return pos_embedding
  dim = pos_embedding.shape[-1]
  compute = jnp.promote_types(pos_embedding.dtype, jnp.float32)
  patches = pos_embedding[0, prefix:].reshape(source_grid, source_grid, dim).astype(compute)
  rows, columns = (jnp.asarray(m, compute) for m in matrices)
  patches = jnp.einsum('yi,xj,ijd->yxd', rows, columns, patches).reshape(1, -1, dim)
  return jnp.concatenate([pos_embedding[:, :prefix].astype(compute), patches], axis=1).astype(pos_embedding.dtype)


def _layer_norm(name, dtype, epsilon=LAYER_NORM_EPSILON):
  # Two-pass variance, as torch computes it: Flax's default E[x^2] - E[x]^2 loses digits on large activations.
  return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, dtype=dtype, name=name)


ACTIVATIONS = {'gelu': lambda x: nn.gelu(x, approximate=False), 'quick_gelu': lambda x: x * nn.sigmoid(1.702 * x)}


def record_patch_grid(module: nn.Module, features: dict, name: str, tokens, grid, prefix: int = 1):
  """Records the patch tokens of (N, prefix + h * w, D) `tokens` as an (N, h, w, D) feature `name`, and returns
  the tokens rebuilt from it, so that a gradient at the feature (Grad-CAM's) flows through the model."""
  n, _, dim = tokens.shape
  patches = feature(module, features, name, tokens[:, prefix:].reshape(n, *grid, dim))
  return jnp.concatenate([tokens[:, :prefix], patches.reshape(n, -1, dim)], axis=1)


class SelfAttention(nn.Module):
  """Multi-head self-attention with one packed q/k/v projection ([q; k; v], heads contiguous in each), as
  both torch's nn.MultiheadAttention (`in_proj_weight`) and DINOv2's `attn.qkv` pack them."""
  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    n, t, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = nn.Dense(3 * dim, kernel_init=xavier, dtype=self.dtype, name='qkv')(x)
    q, k, v = (qkv[:, :, i * dim:(i + 1) * dim].reshape(n, t, self.num_heads, head_dim) for i in range(3))
    scores = jnp.einsum('nqhc,nkhc->nhqk', q, k) * (head_dim ** -0.5)
    weights = nn.softmax(scores.astype(jnp.promote_types(scores.dtype, jnp.float32)), axis=-1).astype(v.dtype)
    weights = nn.Dropout(self.dropout, deterministic=not train)(weights)
    out = jnp.einsum('nhqk,nkhc->nqhc', weights, v).reshape(n, t, dim)
    return nn.Dense(dim, kernel_init=xavier, dtype=self.dtype, name='out')(out)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + attention(norm1(x)), then + mlp(norm2(x)), each branch optionally times
  a layer scale (DINOv2) and dropped per example at `drop_path_rate` (stochastic depth, 'drop_path1' and
  'drop_path2' as in timm and DINOv2). `record` names the feature recorded at norm1's output (the last
  block's: Grad-CAM)."""
  num_heads: int
  mlp_dim: int
  grid: tuple
  layer_scale: bool = False
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.0
  record: str = ''
  dtype: Any = jnp.float32
  norm_epsilon: float = LAYER_NORM_EPSILON
  activation: str = 'gelu'
  prefix: int = 1        # tokens before the patches (class, registers)

  @nn.compact
  def __call__(self, x, features: dict, train: bool):
    dim = x.shape[-1]
    y = _layer_norm('norm1', self.dtype, self.norm_epsilon)(x)
    if self.record:
      y = record_patch_grid(self, features, self.record, y, self.grid, self.prefix)
    y = SelfAttention(self.num_heads, self.attention_dropout, self.dtype, name='attention')(y, train)
    if self.layer_scale:
      y = y * self.param('layer_scale1', nn.initializers.ones, (dim,)).astype(y.dtype)
    x = x + transfer.drop_path(nn.Dropout(self.dropout, deterministic=not train)(y), self.drop_path_rate, train,
                               'drop_path1')
    y = _layer_norm('norm2', self.dtype, self.norm_epsilon)(x)
    y = ACTIVATIONS[self.activation](nn.Dense(self.mlp_dim, kernel_init=xavier, dtype=self.dtype, name='mlp_fc1')(y))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.Dense(dim, kernel_init=xavier, dtype=self.dtype, name='mlp_fc2')(y)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    if self.layer_scale:
      y = y * self.param('layer_scale2', nn.initializers.ones, (dim,)).astype(y.dtype)
    return x + transfer.drop_path(y, self.drop_path_rate, train, 'drop_path2')


def stage_names(depth: int) -> tuple:
  return ('embed', *(f'block{i}' for i in range(depth)), 'norm')


class VisionTransformer(transfer.Backbone, kw_only=True):
  patch_size: int
  hidden_dim: int
  depth: int
  num_heads: int
  mlp_dim: int
  source_grid: int                         # the position embeddings' patch grid side in the weights
  layer_scale: bool = False                # DINOv2's ls1/ls2
  position_interpolation: str = 'torchvision'   # 'torchvision' | 'dinov2' (see the module docstring)
  dropout: float = 0.0                     # torchvision's `dropout` (after the embedding and in every block)
  attention_dropout: float = 0.0           # torchvision's `attention_dropout`
  drop_path_rate: float = 0.0              # the last block's stochastic depth rate (see the module docstring)
  # timm's variants:
  norm_epsilon: float = LAYER_NORM_EPSILON  # CLIP's LayerNorms: 1e-5
  pre_norm: bool = False                    # CLIP's LayerNorm ('norm_pre') after the position embeddings
  patch_bias: bool = True                   # CLIP's patch embedding has none
  embed_class: bool = True                  # False: position embeddings for the patches only (timm's
                                            # no_embed_class), added before the class and register tokens
  reg_tokens: int = 0                       # DINOv2's registers: tokens after the class token, dropped at the end
  activation: str = 'gelu'                  # 'gelu' | 'quick_gelu' (OpenAI CLIP's)

  @nn.compact
  def __call__(self, x, train: bool = False):
    stages = stage_names(self.depth)
    last = transfer.check_cut(self.cut, stages, self.top)
    height, width = x.shape[1:3]
    if height % self.patch_size or width % self.patch_size:
      raise UserInputError(f'config.data.image_size: {height}x{width} is not a multiple of the patch size '
                           f'{self.patch_size} of this Vision Transformer; use e.g. '
                           f'{height // self.patch_size * self.patch_size or self.patch_size}x'
                           f'{width // self.patch_size * self.patch_size or self.patch_size}')
    grid = (height // self.patch_size, width // self.patch_size)
    features = {}
    if self.reg_tokens and self.embed_class:
      raise UserInputError('config.model.reg_tokens needs config.model.embed_class=False (registers take no '
                           'position embedding)')
    x = transfer.StemConv(self.hidden_dim, (self.patch_size,) * 2, self.patch_size, padding='VALID',
                          use_bias=self.patch_bias, kernel_init=nn.initializers.lecun_normal(),
                          gray=self.in_channels == 1, dtype=self.dtype, name='patch_embed')(x)
    n = x.shape[0]
    tokens = x.reshape(n, -1, self.hidden_dim)
    prefix = [self.param('class_token', nn.initializers.zeros, (1, 1, self.hidden_dim))]
    embedded = 1 if self.embed_class else 0
    positions = self.param('pos_embedding', nn.initializers.normal(0.02),
                           (1, embedded + self.source_grid ** 2, self.hidden_dim))
    if self.reg_tokens:
      prefix.append(self.param('reg_token', nn.initializers.zeros, (1, self.reg_tokens, self.hidden_dim)))
    prefix = [jnp.broadcast_to(p, (n, *p.shape[1:])).astype(tokens.dtype) for p in prefix]
    positions = interpolated_positions(positions, self.source_grid, grid, self.position_interpolation,
                                       embedded).astype(tokens.dtype)
    if self.embed_class:
      tokens = jnp.concatenate([*prefix, tokens], 1) + positions
    else:
      tokens = jnp.concatenate([*prefix, tokens + positions], 1)
    tokens = nn.Dropout(self.dropout, deterministic=not train)(tokens)
    if self.pre_norm:
      tokens = _layer_norm('norm_pre', self.dtype, self.norm_epsilon)(tokens)
    count = 1 + self.reg_tokens
    tokens = record_patch_grid(self, features, 'embed', tokens, grid, count)
    blocks = min(last, self.depth)
    rates = transfer.linear_drop_path_rates(self.drop_path_rate, self.depth, self.depth - 1)
    for i in range(blocks):
      tokens = EncoderBlock(self.num_heads, self.mlp_dim, grid, self.layer_scale, self.dropout,
                            self.attention_dropout, rates[i], record=CAM_FEATURE if i == blocks - 1 else '',
                            dtype=self.dtype, norm_epsilon=self.norm_epsilon, activation=self.activation,
                            prefix=count, name=f'block{i}')(tokens, features, train)
      tokens = record_patch_grid(self, features, f'block{i}', tokens, grid, count)
    if last == len(stages) - 1:
      tokens = _layer_norm('norm', self.dtype, self.norm_epsilon)(tokens)
      tokens = record_patch_grid(self, features, 'norm', tokens, grid, count)
    if self.top == 'source':
      x = features['pre_logits'] = tokens[:, 0]
      return nn.Dense(self.num_outputs, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                      name='head')(x).astype(jnp.float32), features
    patches = tokens[:, count:].reshape(n, *grid, self.hidden_dim)
    return transfer.new_top(self, patches, features, train), features


def _block_rule(source: str, target: str, kind: str = 'vector'):
  return Rule(source, 'params/block{0}/' + target, kind)


TORCHVISION_LAYER = r'encoder\.layers\.encoder_layer_(\d+)\.'
TORCHVISION_RULES = (
    Rule(r'conv_proj\.weight', 'params/patch_embed/kernel', 'conv'),
    Rule(r'conv_proj\.bias', 'params/patch_embed/bias'),
    Rule(r'class_token', 'params/class_token'),
    Rule(r'encoder\.pos_embedding', 'params/pos_embedding'),
    _block_rule(TORCHVISION_LAYER + r'ln_(\d)\.weight', 'norm{1}/scale'),
    _block_rule(TORCHVISION_LAYER + r'ln_(\d)\.bias', 'norm{1}/bias'),
    _block_rule(TORCHVISION_LAYER + r'self_attention\.in_proj_weight', 'attention/qkv/kernel', 'linear'),
    _block_rule(TORCHVISION_LAYER + r'self_attention\.in_proj_bias', 'attention/qkv/bias'),
    _block_rule(TORCHVISION_LAYER + r'self_attention\.out_proj\.weight', 'attention/out/kernel', 'linear'),
    _block_rule(TORCHVISION_LAYER + r'self_attention\.out_proj\.bias', 'attention/out/bias'),
    # torchvision renamed MLPBlock's linear_1/linear_2 to 0/3 in 0.14 and still loads files with either.
    _block_rule(TORCHVISION_LAYER + r'mlp\.(?:0|linear_1)\.weight', 'mlp_fc1/kernel', 'linear'),
    _block_rule(TORCHVISION_LAYER + r'mlp\.(?:0|linear_1)\.bias', 'mlp_fc1/bias'),
    _block_rule(TORCHVISION_LAYER + r'mlp\.(?:3|linear_2)\.weight', 'mlp_fc2/kernel', 'linear'),
    _block_rule(TORCHVISION_LAYER + r'mlp\.(?:3|linear_2)\.bias', 'mlp_fc2/bias'),
    Rule(r'encoder\.ln\.weight', 'params/norm/scale'),
    Rule(r'encoder\.ln\.bias', 'params/norm/bias'),
    Rule(r'heads\.head\.weight', 'params/head/kernel', 'linear'),
    Rule(r'heads\.head\.bias', 'params/head/bias'),
)

DINOV2_BLOCK = r'blocks\.(\d+)\.'
DINOV2_RULES = (
    Rule(r'patch_embed\.proj\.weight', 'params/patch_embed/kernel', 'conv'),
    Rule(r'patch_embed\.proj\.bias', 'params/patch_embed/bias'),
    Rule(r'cls_token', 'params/class_token'),
    Rule(r'pos_embed', 'params/pos_embedding'),
    _block_rule(DINOV2_BLOCK + r'norm(\d)\.weight', 'norm{1}/scale'),
    _block_rule(DINOV2_BLOCK + r'norm(\d)\.bias', 'norm{1}/bias'),
    _block_rule(DINOV2_BLOCK + r'attn\.qkv\.weight', 'attention/qkv/kernel', 'linear'),
    _block_rule(DINOV2_BLOCK + r'attn\.qkv\.bias', 'attention/qkv/bias'),
    _block_rule(DINOV2_BLOCK + r'attn\.proj\.weight', 'attention/out/kernel', 'linear'),
    _block_rule(DINOV2_BLOCK + r'attn\.proj\.bias', 'attention/out/bias'),
    _block_rule(DINOV2_BLOCK + r'ls(\d)\.gamma', 'layer_scale{1}'),
    _block_rule(DINOV2_BLOCK + r'mlp\.fc(\d)\.weight', 'mlp_fc{1}/kernel', 'linear'),
    _block_rule(DINOV2_BLOCK + r'mlp\.fc(\d)\.bias', 'mlp_fc{1}/bias'),
    Rule(r'norm\.weight', 'params/norm/scale'),
    Rule(r'norm\.bias', 'params/norm/bias'),
)
DINOV2_UNUSED = r'mask_token'   # the masked-image-modelling token: training only


def convert_torchvision(path):
  return apply_rules(read_state_dict(path), TORCHVISION_RULES)


def convert_dinov2(path):
  return apply_rules(read_state_dict(path), DINOV2_RULES, ignore=DINOV2_UNUSED)


def stages_of(depth: int) -> tuple:
  """(stage, regex) pairs of a ViT of `depth` blocks."""
  regexes = {'embed': r'^(patch_embed/|class_token$|pos_embedding$|reg_token$|norm_pre/)', 'norm': r'^norm/'}
  return tuple((stage, regexes.get(stage, rf'^{stage}/')) for stage in stage_names(depth))


def _spec(name, fields, convert, weights, description, family):
  return ModelSpec(
      name, functools.partial(VisionTransformer, **fields), family, cam_layer=CAM_FEATURE, description=description,
      preprocessing=preprocessing.TORCH_IMAGENET, stages=stages_of(fields['depth']),
      weights=weights, convert=convert, source_head=r'^params/head/', source_top=r'^params/head/',
      stem='patch_embed|params/patch_embed/bias')


VIT_B = dict(hidden_dim=768, depth=12, num_heads=12, mlp_dim=3072)
DINOV2 = dict(patch_size=14, source_grid=37, layer_scale=True, position_interpolation='dinov2')

register(_spec(
    'vit_b16', dict(patch_size=16, source_grid=14, **VIT_B), convert_torchvision,
    {'imagenet': WeightsFile('https://download.pytorch.org/models/vit_b_16-c867db91.pth', 'sha256:c867db91')},
    'torchvision vit_b_16, ImageNet weights by name or from a state_dict file', 'torchvision'))
# facebookresearch/dinov2 publishes no checksums; these sha256 are the files' as pinned by other projects.
register(_spec(
    'dinov2_vits14', dict(hidden_dim=384, depth=12, num_heads=6, mlp_dim=1536, **DINOV2), convert_dinov2,
    {'lvd142m': WeightsFile('https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth',
                            'sha256:b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9')},
    'DINOv2 ViT-S/14 (self-supervised, LVD-142M), its backbone checkpoint by name or from the file; the head '
    'is new', 'dinov2'))
register(_spec(
    'dinov2_vitb14', dict(**VIT_B, **DINOV2), convert_dinov2,
    {'lvd142m': WeightsFile('https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth',
                            'sha256:0b8b82f85de91b424aded121c7e1dcc2b7bc6d0adeea651bf73a13307fad8c73')},
    'DINOv2 ViT-B/14 (self-supervised, LVD-142M), its backbone checkpoint by name or from the file; the head '
    'is new', 'dinov2'))
