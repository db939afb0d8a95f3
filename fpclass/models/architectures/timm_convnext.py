"""timm's ConvNeXt and ConvNeXt V2 from Hub checkpoints, as `torchvision_convnext.ConvNeXt` with their widths
and depths (V2: `grn`).

timm's `stages.<s>.blocks.<j>` are torchvision's `features.<2s+1>.<j>`, `stages.<s>.downsample` its
`features.<2s>`, `stem` its `features.0` and `head.norm`/`head.fc` its classifier. The small models' MLPs are 1x1
convolutions in timm (conv_mlp), the same map as its Linear layers ('pointwise' takes either).
"""
import functools

from fpclass.models.architectures.torchvision_convnext import STAGES, ConvNeXt, stage_regex
from fpclass.models.timm_registry import register_timm
from fpclass.models.weights import Rule

SMALL = {'atto': (40, (2, 2, 6, 2)), 'femto': (48, (2, 2, 6, 2)), 'pico': (64, (2, 2, 6, 2)),
         'nano': (80, (2, 2, 8, 2)), 'tiny': (96, (3, 3, 9, 3))}
LARGE = {'small': 96, 'base': 128, 'large': 192, 'xlarge': 256, 'huge': 352}
SIZES = {'convnextv2_huge': 384}   # default input side where it is not 224


def block_setting(width: int, depths) -> tuple:
  return tuple((width * 2 ** i, depth) for i, depth in enumerate(depths))


ARCHITECTURES = {   # name: (block_setting, grn)
    **{f'convnext_{k}': (block_setting(w, d), False) for k, (w, d) in SMALL.items()},
    **{f'convnext_{k}': (block_setting(w, (3, 3, 27, 3)), False) for k, w in LARGE.items() if k != 'huge'},
    **{f'convnextv2_{k}': (block_setting(w, d), True) for k, (w, d) in SMALL.items()},
    **{f'convnextv2_{k}': (block_setting(w, (3, 3, 27, 3)), True) for k, w in LARGE.items() if k != 'xlarge'},
}


def _pair(source: str, target: str, kind: str = 'vector', leaf: str = 'kernel'):
  """A layer's weight (to `leaf`, by `kind`) and bias."""
  return (Rule(source + r'\.weight', f'params/{target}/{leaf}', kind), Rule(source + r'\.bias', f'params/{target}/bias'))


def _stage_rules(s: int) -> tuple:
  blocks, block = rf'stages\.{s}\.blocks\.(\d+)\.', f'features_{2 * s + 1}_{{0}}'
  return (
      *_pair(rf'stages\.{s}\.downsample\.0', f'features_{2 * s}_norm', leaf='scale'),
      *_pair(rf'stages\.{s}\.downsample\.1', f'features_{2 * s}_conv', 'conv'),
      *_pair(blocks + 'conv_dw', f'{block}/dwconv', 'conv'),
      *_pair(blocks + 'norm', f'{block}/norm', leaf='scale'),
      *_pair(blocks + r'mlp\.fc1', f'{block}/pwconv1', 'pointwise'),
      *_pair(blocks + r'mlp\.fc2', f'{block}/pwconv2', 'pointwise'),
      Rule(blocks + 'gamma', f'params/{block}/layer_scale'),
      Rule(blocks + r'mlp\.grn\.weight', f'params/{block}/grn_weight', 'flatten'),
      Rule(blocks + r'mlp\.grn\.bias', f'params/{block}/grn_bias', 'flatten'),
  )


RULES = (
    *_pair(r'stem\.0', 'features_0_conv', 'conv'),
    *_pair(r'stem\.1', 'features_0_norm', leaf='scale'),
    *(rule for s in range(4) for rule in _stage_rules(s)),
    *_pair(r'head\.norm', 'classifier_0', leaf='scale'),
    *_pair(r'head\.fc', 'classifier_2', 'linear'),
)

for _arch, (_setting, _grn) in ARCHITECTURES.items():
  register_timm(
      _arch, functools.partial(ConvNeXt, block_setting=_setting, grn=_grn, drop_path_rate=0.0),
      'ConvNeXt V2' if _grn else 'ConvNeXt', rules=RULES, cam_layer='stage4', head=r'^params/classifier_2/',
      top=r'^params/classifier_(0|2)/', stages=tuple((name, stage_regex(i)) for i, name in enumerate(STAGES)),
      stem='features_0_conv|params/features_0_conv/bias', input_size=SIZES.get(_arch, 224))
