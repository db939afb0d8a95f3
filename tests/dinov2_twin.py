"""A minimal torch DINOv2 Vision Transformer, the reference for fpclass' DINOv2 loader.

The dinov2 package cannot be installed here, so this reproduces the part of facebookresearch/dinov2's
`DinoVisionTransformer` that a published backbone checkpoint and a forward pass touch, written for these
tests: the same module tree and so the same state_dict keys (`cls_token`, `pos_embed`, `mask_token`,
`patch_embed.proj`, `blocks.N.norm1`, `attn.qkv`, `attn.proj`, `ls1.gamma`, `norm2`, `mlp.fc1`, `mlp.fc2`,
`ls2.gamma`, `norm`), and the same computation: pre-norm blocks with layer scale, LayerNorm eps 1e-6, exact
GELU, and the position embeddings resized by torch's bicubic `interpolate` with the scale factor
(grid + 0.1) / source grid, as DINOv2's `interpolate_pos_encoding` does for the published models
(`interpolate_offset=0.1`, no antialiasing). `forward` returns the final LayerNorm's class token, DINOv2's
`x_norm_clstoken` (what `torch.hub.load('facebookresearch/dinov2', ...)(x)` returns).
"""
import torch
from torch import nn

OFFSET = 0.1


class Attention(nn.Module):
  def __init__(self, dim, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    batch, tokens, dim = x.shape
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = torch.softmax(q @ k.transpose(-2, -1) * (dim // self.num_heads) ** -0.5, dim=-1)
    return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, dim))


class LayerScale(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.gamma = nn.Parameter(torch.ones(dim))

  def forward(self, x):
    return x * self.gamma


class Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  def __init__(self, dim, num_heads, mlp_ratio=4):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, num_heads)
    self.ls1 = LayerScale(dim)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, mlp_ratio * dim)
    self.ls2 = LayerScale(dim)

  def forward(self, x):
    x = x + self.ls1(self.attn(self.norm1(x)))
    return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
  def __init__(self, patch_size, dim):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class DinoV2Twin(nn.Module):
  """DINOv2's ViT at `image_size` (518 for the published models: a 37x37 grid of 14-pixel patches)."""

  def __init__(self, dim=384, depth=12, num_heads=6, patch_size=14, image_size=518):
    super().__init__()
    self.patch_size = patch_size
    self.source_grid = image_size // patch_size
    self.patch_embed = PatchEmbed(patch_size, dim)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.source_grid ** 2, dim))
    self.blocks = nn.ModuleList(Block(dim, num_heads) for _ in range(depth))
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.mask_token = nn.Parameter(torch.zeros(1, dim))

  def positions(self, height, width):
    rows, columns = height // self.patch_size, width // self.patch_size
    if (rows, columns) == (self.source_grid, self.source_grid):
      return self.pos_embed
    dim = self.pos_embed.shape[-1]
    grid = self.pos_embed[:, 1:].reshape(1, self.source_grid, self.source_grid, dim).permute(0, 3, 1, 2)
    scale = ((rows + OFFSET) / self.source_grid, (columns + OFFSET) / self.source_grid)
    grid = nn.functional.interpolate(grid, scale_factor=scale, mode='bicubic', antialias=False)
    assert grid.shape[-2:] == (rows, columns)
    return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)

  def forward(self, x):
    height, width = x.shape[-2:]
    assert height % self.patch_size == 0 and width % self.patch_size == 0
    tokens = self.patch_embed(x)
    tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.positions(height, width)
    for block in self.blocks:
      tokens = block(tokens)
    return self.norm(tokens)[:, 0]


def parameter_count(**sizes) -> int:
  """The twin's parameters without building its weights (meta device), `mask_token` excluded."""
  with torch.device('meta'):
    twin = DinoV2Twin(**sizes)
  return sum(p.numel() for name, p in twin.named_parameters() if name != 'mask_token')

