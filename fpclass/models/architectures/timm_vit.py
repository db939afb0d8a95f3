"""timm's Vision Transformers from Hub checkpoints (augreg ViTs, CLIP image towers, DINOv2 with and without
registers), as `vision_transformer.VisionTransformer` with timm's fields.

timm's tensor names are DINOv2's (`blocks.<i>.attn.qkv`, `ls1.gamma`, ...) plus `reg_token`, CLIP's `norm_pre`
and the classifier `head`. Position embeddings are resized to the input's patch grid as timm resizes them
(`resample_abs_pos_embed`: antialiased bicubic, position_interpolation='timm').
"""
import functools

from fpclass.models.architectures.vision_transformer import CAM_FEATURE, DINOV2_RULES, VisionTransformer, stages_of
from fpclass.models.timm_registry import register_timm
from fpclass.models.weights import Rule

CLIP = dict(pre_norm=True, patch_bias=False, norm_epsilon=1e-5)
QUICK = dict(activation='quick_gelu')
LS = dict(layer_scale=True)
REG4 = dict(reg_tokens=4, embed_class=False)

# name: (width, depth, heads, patch, input side, normalisation, fields)
ARCHITECTURES = {
    'vit_tiny_patch16_224': (192, 12, 3, 16, 224, 'inception', {}),
    'vit_tiny_patch16_384': (192, 12, 3, 16, 384, 'inception', {}),
    'vit_small_patch8_224': (384, 12, 6, 8, 224, 'imagenet', {}),
    'vit_small_patch16_224': (384, 12, 6, 16, 224, 'inception', {}),
    'vit_small_patch16_384': (384, 12, 6, 16, 384, 'inception', {}),
    'vit_small_patch16_36x1_224': (384, 36, 6, 16, 224, 'inception', LS),
    'vit_small_patch32_224': (384, 12, 6, 32, 224, 'inception', {}),
    'vit_small_patch32_384': (384, 12, 6, 32, 384, 'inception', {}),
    'vit_base_patch8_224': (768, 12, 12, 8, 224, 'inception', {}),
    'vit_base_patch16_224': (768, 12, 12, 16, 224, 'inception', {}),
    'vit_base_patch16_384': (768, 12, 12, 16, 384, 'inception', {}),
    'vit_base_patch16_plus_240': (896, 12, 14, 16, 240, 'inception', LS),
    'vit_base_patch32_224': (768, 12, 12, 32, 224, 'inception', {}),
    'vit_base_patch32_384': (768, 12, 12, 32, 384, 'inception', {}),
    'vit_base_patch32_plus_256': (896, 12, 14, 32, 256, 'inception', LS),
    'vit_large_patch14_224': (1024, 24, 16, 14, 224, 'inception', {}),
    'vit_large_patch16_224': (1024, 24, 16, 16, 224, 'inception', {}),
    'vit_large_patch16_384': (1024, 24, 16, 16, 384, 'inception', {}),
    'vit_large_patch32_224': (1024, 24, 16, 32, 224, 'inception', {}),
    'vit_large_patch32_384': (1024, 24, 16, 32, 384, 'inception', {}),
    'vit_huge_patch14_224': (1280, 32, 16, 14, 224, 'inception', {}),
    # DINOv2 (timm's port of the LVD-142M checkpoints), with and without registers.
    'vit_small_patch14_dinov2': (384, 12, 6, 14, 518, 'imagenet', LS),
    'vit_base_patch14_dinov2': (768, 12, 12, 14, 518, 'imagenet', LS),
    'vit_large_patch14_dinov2': (1024, 24, 16, 14, 518, 'imagenet', LS),
    'vit_small_patch14_reg4_dinov2': (384, 12, 6, 14, 518, 'imagenet', {**LS, **REG4}),
    'vit_base_patch14_reg4_dinov2': (768, 12, 12, 14, 518, 'imagenet', {**LS, **REG4}),
    'vit_large_patch14_reg4_dinov2': (1024, 24, 16, 14, 518, 'imagenet', {**LS, **REG4}),
    # CLIP image towers (OpenAI, LAION, DataComp...).
    'vit_xsmall_patch16_clip_224': (256, 10, 4, 16, 224, 'clip', CLIP),
    'vit_medium_patch16_clip_224': (512, 12, 8, 16, 224, 'clip', CLIP),
    'vit_medium_patch32_clip_224': (512, 12, 8, 32, 224, 'clip', CLIP),
    'vit_betwixt_patch32_clip_224': (640, 12, 10, 32, 224, 'clip', CLIP),
    'vit_base_patch16_clip_224': (768, 12, 12, 16, 224, 'clip', CLIP),
    'vit_base_patch16_clip_384': (768, 12, 12, 16, 384, 'clip', CLIP),
    'vit_base_patch16_clip_quickgelu_224': (768, 12, 12, 16, 224, 'clip', {**CLIP, **QUICK}),
    'vit_base_patch16_plus_clip_240': (896, 12, 14, 16, 240, 'clip', CLIP),
    'vit_base_patch32_clip_224': (768, 12, 12, 32, 224, 'clip', CLIP),
    'vit_base_patch32_clip_256': (768, 12, 12, 32, 256, 'clip', CLIP),
    'vit_base_patch32_clip_384': (768, 12, 12, 32, 384, 'clip', CLIP),
    'vit_base_patch32_clip_448': (768, 12, 12, 32, 448, 'clip', CLIP),
    'vit_base_patch32_clip_quickgelu_224': (768, 12, 12, 32, 224, 'clip', {**CLIP, **QUICK}),
    'vit_large_patch14_clip_224': (1024, 24, 16, 14, 224, 'inception', CLIP),
    'vit_large_patch14_clip_336': (1024, 24, 16, 14, 336, 'inception', CLIP),
    'vit_large_patch14_clip_quickgelu_224': (1024, 24, 16, 14, 224, 'clip', {**CLIP, **QUICK}),
    'vit_large_patch14_clip_quickgelu_336': (1024, 24, 16, 14, 336, 'clip', {**CLIP, **QUICK}),
    'vit_huge_patch14_clip_224': (1280, 32, 16, 14, 224, 'clip', CLIP),
    'vit_huge_patch14_clip_336': (1280, 32, 16, 14, 336, 'clip', CLIP),
    'vit_huge_patch14_clip_378': (1280, 32, 16, 14, 378, 'clip', CLIP),
    'vit_huge_patch14_clip_quickgelu_224': (1280, 32, 16, 14, 224, 'clip', {**CLIP, **QUICK}),
    'vit_huge_patch14_clip_quickgelu_378': (1280, 32, 16, 14, 378, 'clip', {**CLIP, **QUICK}),
}

RULES = (
    *DINOV2_RULES,
    Rule(r'reg_token', 'params/reg_token'),
    Rule(r'norm_pre\.weight', 'params/norm_pre/scale'),
    Rule(r'norm_pre\.bias', 'params/norm_pre/bias'),
    Rule(r'head\.weight', 'params/head/kernel', 'linear'),
    Rule(r'head\.bias', 'params/head/bias'),
)

for _arch, (_width, _depth, _heads, _patch, _side, _norm, _fields) in ARCHITECTURES.items():
  register_timm(
      _arch, functools.partial(VisionTransformer, patch_size=_patch, hidden_dim=_width, depth=_depth, num_heads=_heads,
                               mlp_dim=4 * _width, source_grid=_side // _patch, position_interpolation='timm',
                               **_fields),
      'Vision Transformer', rules=RULES, cam_layer=CAM_FEATURE, head=r'^params/head/', top=r'^params/head/',
      stages=stages_of(_depth), stem='patch_embed|params/patch_embed/bias', input_size=_side, norm=_norm,
      ignore=r'mask_token')
