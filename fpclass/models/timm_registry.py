"""What the timm families share: their registered names ('timm_' + timm's architecture), their default
preprocessing and input size (timm's default pretrained_cfg of that architecture; a checkpoint's own config.json
overrides it, see `hub`), and the spec every timm port registers."""
import functools

from fpclass.models import ModelSpec, preprocessing, register
from fpclass.models.hub import NAME_PREFIX
from fpclass.models.weights import apply_rules, read_state_dict

FAMILY = 'timm'
NORMS = {   # timm.data.constants, by the name the tables use
    'imagenet': preprocessing.TORCH_IMAGENET,
    'inception': preprocessing.Normalisation((0.5,) * 3, (0.5,) * 3),
    'clip': preprocessing.Normalisation((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}


def convert_with(rules, ignore=r'.*num_batches_tracked$', path=None):
  """A safetensors (or state_dict) file of timm names mapped through `rules`."""
  return apply_rules(read_state_dict(path), rules, ignore=ignore)


def register_timm(arch: str, module, family_note: str, *, rules, stages, cam_layer: str, head: str, top: str,
                  stem: str, input_size: int = 224, norm: str = 'imagenet', ignore=r'.*num_batches_tracked$',
                  stem_norm: str = '') -> ModelSpec:
  """Registers timm architecture `arch` as 'timm_<arch>': `module` (a partial of a Flax port) loaded through
  `rules` from timm's own tensor names."""
  return register(ModelSpec(
      NAME_PREFIX + arch, module, FAMILY, cam_layer=cam_layer,
      description=f"timm {arch} ({family_note}); weights by name: config.model.pretrained='hf-hub:timm/{arch}.<tag>'",
      preprocessing=NORMS[norm], stages=stages, convert=functools.partial(convert_with, rules, ignore),
      source_head=head, source_top=top, stem=stem, stem_norm=stem_norm, input_size=(input_size, input_size)))
