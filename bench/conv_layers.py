"""Single layers (convolutions, a max pool), XLA against PyTorch (NCHW and channels_last), in the same process.

    python bench/conv_layers.py [--rounds 5] [--precision fp32|bf16] [--json out.json]
                                [--only footprint,resnet18,tiny,depthwise,pool,matmul]

Forward passes only, unless a row says otherwise. What it answers (docs/performance.md):

- How close each framework's kernels come to this machine's FLOP rate, layer by layer, which bounds what any
  whole-model ratio can be (the footprint CNN is 85% its second convolution).
- Where XLA:CPU is weak: a convolution with one input channel (the footprint CNN's first layer) runs at a
  tenth of XLA's rate on its second layer. The `tap sum` row computes that layer as a sum over the kernel's
  nine taps of shifted input slices times a kernel row, an elementwise loop XLA fuses. The `footprint forward`
  rows put it into the whole inference pass, with the 2x2 pool either a reduction over a reshape (fpclass's
  pooling) or a maximum of four strided slices, against fpclass's own FootprintCNN (`xla`): what XLA fuses,
  and so what the formulation is worth end to end, depends on the pair.
- `tiny`: a 3x3 convolution on maps smaller than its kernel (ResNet-18's last stage at 64x64 or 32x32 input),
  which XLA:CPU runs with its naive loop emitter after swapping the operands; `fpclass Conv` is what fpclass's
  models run instead (`fpclass.models.layers.conv`).
- `depthwise`: EfficientNet-B0's depthwise convolutions, which XLA:CPU runs at about 1 GFLOP/s; `fpclass Conv`
  is fpclass's sum over taps.
- `pool`: ResNet's overlapping 3x3/2 stem max pool, forward and backward: flax's (select-and-scatter
  gradient) against `fpclass.models.layers.pooling.max_pool` and PyTorch.
- A dense matmul row gives each framework's sustained peak for reference.

XLA programs are compiled with fpclass's CPU options (`fpclass.runtime.compiler_options.jit_options`). Rounds alternate the
frameworks; each figure is the median over rounds of the mean time per call.
"""
import argparse
import json
import statistics
import time

import harness
import jax
import jax.numpy as jnp
import numpy as np

from fpclass.models.layers import conv as fpclass_conv
from fpclass.runtime.compiler_options import jit_options

# (name, batch, height, width, in channels, out channels, kernel, stride)
LAYERS = {
    'footprint': [('footprint conv1 3x3 1->32 @120x80', 256, 120, 80, 1, 32, 3, 1),
                  ('footprint conv2 3x3 32->64 @60x40', 256, 60, 40, 32, 64, 3, 1)],
    'resnet18': [('resnet18 conv1 7x7/2 3->64 @224', 32, 224, 224, 3, 64, 7, 2),
                 ('resnet18 3x3 64->64 @56', 32, 56, 56, 64, 64, 3, 1),
                 ('resnet18 3x3/2 64->128 @56', 32, 56, 56, 64, 128, 3, 2),
                 ('resnet18 1x1/2 64->128 @56', 32, 56, 56, 64, 128, 1, 2),
                 ('resnet18 3x3 128->128 @28', 32, 28, 28, 128, 128, 3, 1),
                 ('resnet18 3x3 256->256 @14', 32, 14, 14, 256, 256, 3, 1),
                 ('resnet18 3x3 512->512 @7', 32, 7, 7, 512, 512, 3, 1)],
    # ResNet-18's last stage on 64x64 and 32x32 inputs: maps smaller than the 3x3 kernel (fpclass.models.layers.conv)
    'tiny': [('resnet18 3x3 512->512 @2x2', 256, 2, 2, 512, 512, 3, 1),
             ('resnet18 3x3 512->512 @1x1', 256, 1, 1, 512, 512, 3, 1),
             ('resnet18 3x3 512->512 @3x3 (for scale)', 256, 3, 3, 512, 512, 3, 1)],
    # EfficientNet-B0's depthwise convolutions (out channels == in channels == feature groups)
    'depthwise': [('efficientnet_b0 dw 3x3 32 @112', 32, 112, 112, 32, 32, 3, 1),
                  ('efficientnet_b0 dw 3x3/2 96 @112', 32, 112, 112, 96, 96, 3, 2),
                  ('efficientnet_b0 dw 5x5/2 144 @56', 32, 56, 56, 144, 144, 5, 2),
                  ('efficientnet_b0 dw 3x3 480 @14', 32, 14, 14, 480, 480, 3, 1),
                  ('efficientnet_b0 dw 5x5 1152 @7', 32, 7, 7, 1152, 1152, 5, 1)],
}


def tap_sum_conv(x, kernel, stride, pad):
  """NHWC x HWIO convolution as a sum over taps and input channels of strided slices times kernel rows."""
  kh, kw, cin, _ = kernel.shape
  x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out_h, out_w = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  total = 0
  for i in range(kh):
    for j in range(kw):
      window = x[:, i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride, :]
      for c in range(cin):
        total = total + window[..., c:c + 1] * kernel[i, j, c]
  return total


def lax_conv(x, kernel, stride, pad, groups=1):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)


def timed(fn, reps):
  start = time.perf_counter()
  for _ in range(reps):
    fn()
  return (time.perf_counter() - start) / reps


def jax_call(f, *args):
  compiled = jax.jit(f, compiler_options=jit_options())
  return lambda: jax.block_until_ready(compiled(*args))


def block_pool(y):
  """2x2 max pool as fpclass.models.layers.pooling does it: a reduction over a reshape."""
  n, h, w, c = y.shape
  return y.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def slice_pool(y):
  """2x2 max pool as an elementwise maximum of four strided slices."""
  return jnp.maximum(jnp.maximum(y[:, 0::2, 0::2], y[:, 0::2, 1::2]), jnp.maximum(y[:, 1::2, 0::2], y[:, 1::2, 1::2]))


def footprint_forward(conv1, pool, dtype):
  """The footprint CNN's inference pass (conv-relu-pool x2, fc 128, head), `conv1` and `pool` swapped in."""
  def forward(p, x):
    y = pool(jax.nn.relu(conv1(x, p['w1'], 1, 1) + p['b1']))
    y = pool(jax.nn.relu(lax_conv(y, p['w2'], 1, 1) + p['b2']))
    y = jax.nn.relu(y.reshape(y.shape[0], -1) @ p['w3'] + p['b3'])
    return y @ p['w4']
  rng = np.random.default_rng(0)
  shapes = dict(w1=(3, 3, 1, 32), b1=(32,), w2=(3, 3, 32, 64), b2=(64,), w3=(30 * 20 * 64, 128), b3=(128,), w4=(128, 2))
  params = {k: jnp.asarray(rng.normal(0, 0.05, s), dtype) for k, s in shapes.items()}
  return jax_call(forward, params, footprint_images(dtype))


def footprint_images(dtype):
  return jnp.asarray(np.random.default_rng(1).random((256, 120, 80, 1)), dtype)


def fpclass_footprint_forward(dtype):
  """fpclass's own FootprintCNN inference pass (Flax module, production pooling)."""
  from fpclass.models.architectures.cnn import FootprintCNN
  model = FootprintCNN(dtype=dtype)
  x = footprint_images(dtype)
  variables = {'params': model.init(jax.random.PRNGKey(0), x[:1])['params']}  # as the predict step: no perturbations
  return jax_call(lambda v, images: model.apply(v, images)[0], variables, x)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--reps', type=int, default=3, help='calls per round')
  p.add_argument('--precision', choices=('fp32', 'bf16'), default='fp32')
  p.add_argument('--only', default='footprint,resnet18,tiny,depthwise,pool,matmul')
  p.add_argument('--json', type=str)
  args = p.parse_args()
  import torch
  dtype, tdtype = (jnp.float32, torch.float32) if args.precision == 'fp32' else (jnp.bfloat16, torch.bfloat16)
  only = set(args.only.split(','))
  env = harness.environment()
  print(f'conv layers, forward, {args.precision} | {env["cpu"]}, {env["cpu_count"]} cores | jax {env["jax"]}, '
        f'torch {env["torch"]} | {env["date"]}, load average {env["load_average"]}', flush=True)
  rows = {}  # name -> {variant: callable}, flop count
  for group in ('footprint', 'resnet18', 'tiny', 'depthwise'):
    if group not in only:
      continue
    for name, n, h, w, cin, cout, k, stride in LAYERS[group]:
      rng = np.random.default_rng(0)
      groups = cin if group == 'depthwise' else 1
      x = rng.random((n, h, w, cin), np.float32)
      kernel = rng.normal(0, 0.05, (k, k, cin // groups, cout)).astype(np.float32)
      pad = k // 2
      out_h, out_w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
      flops = 2 * n * out_h * out_w * cout * (cin // groups) * k * k
      xj, kj = jnp.asarray(x, dtype), jnp.asarray(kernel, dtype)
      xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(tdtype)
      kt = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous().to(tdtype)
      xcl = xt.contiguous(memory_format=torch.channels_last)
      variants = {
          'xla': jax_call(lambda a, b, s=stride, q=pad, g=groups: lax_conv(a, b, s, q, g), xj, kj),
          'torch': lambda a=xt, b=kt, s=stride, q=pad, g=groups: torch.nn.functional.conv2d(a, b, stride=s, padding=q,
                                                                                           groups=g),
          'torch cl': lambda a=xcl, b=kt, s=stride, q=pad, g=groups: torch.nn.functional.conv2d(a, b, stride=s,
                                                                                               padding=q, groups=g),
      }
      if group in ('tiny', 'depthwise'):  # what fpclass's models run: fpclass.models.layers.conv.Conv's convolution
        dims = jax.lax.conv_dimension_numbers(xj.shape, kj.shape, fpclass_conv.NHWC)
        variants['fpclass Conv'] = jax_call(
            lambda a, b, s=stride, q=pad, d=dims, g=groups: fpclass_conv.conv_general_dilated(
                a, b, (s, s), ((q, q), (q, q)), dimension_numbers=d, feature_group_count=g), xj, kj)
      if cin == 1:
        variants['xla tap sum'] = jax_call(lambda a, b, s=stride, q=pad: tap_sum_conv(a, b, s, q), xj, kj)
      rows[name] = (variants, flops)
  if 'footprint' in only:
    rows['footprint forward, batch 256 (whole model)'] = ({
        'xla': fpclass_footprint_forward(dtype),  # the production model: lax conv, reshape-reduce pooling
        'conv+reduce': footprint_forward(lax_conv, block_pool, dtype),
        'conv+slices': footprint_forward(lax_conv, slice_pool, dtype),
        'taps+reduce': footprint_forward(tap_sum_conv, block_pool, dtype),
        'taps+slices': footprint_forward(tap_sum_conv, slice_pool, dtype)}, None)
  if 'pool' in only:  # ResNet's 3x3/2 stem pool, forward + backward (fpclass.models.layers.pooling)
    import flax.linen as nn

    from fpclass.models.layers.pooling import max_pool
    x = np.random.default_rng(0).random((32, 112, 112, 64), np.float32)
    xj = jnp.asarray(x)

    def forward_backward(pool):
      return jax_call(lambda v: jax.grad(lambda u: pool(u).sum())(v), xj)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).requires_grad_()

    def torch_forward_backward():
      with torch.enable_grad():
        torch.nn.functional.max_pool2d(xt, 3, 2, 1).sum().backward()
    rows['resnet stem max pool 3x3/2 @112x112x64, forward + backward (32)'] = ({
        'xla': forward_backward(lambda u: nn.max_pool(u, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))),
        'fpclass pool': forward_backward(lambda u: max_pool(u, (3, 3), (2, 2), ((1, 1), (1, 1)))),
        'torch cl': torch_forward_backward}, None)
  if 'matmul' in only:
    rng = np.random.default_rng(0)
    a = rng.random((4096, 4096), np.float32)
    aj, at = jnp.asarray(a, dtype), torch.from_numpy(a).to(tdtype)
    rows['matmul 4096^3'] = ({'xla': jax_call(lambda m: m @ m, aj), 'torch': lambda: at @ at}, 2 * 4096 ** 3)

  times = {name: {v: [] for v in variants} for name, (variants, _) in rows.items()}
  with torch.no_grad():
    for variants, _ in rows.values():  # warm-up (compiles the XLA programs)
      for fn in variants.values():
        fn()
    for _ in range(args.rounds):
      for name, (variants, _) in rows.items():
        for v, fn in variants.items():
          times[name][v].append(timed(fn, args.reps))
  out = dict(env=env, precision=args.precision, rounds=args.rounds, layers={})
  print(f'\n{"layer":46s} {"variant":12s} {"ms":>8s} {"GFLOP/s":>8s} {"speed vs xla":>12s}')
  for name, (variants, flops) in rows.items():
    xla_ms = statistics.median(times[name]['xla']) * 1e3
    out['layers'][name] = {}
    for v in variants:
      ms = statistics.median(times[name][v]) * 1e3
      rate = flops / ms / 1e6 if flops else None
      out['layers'][name][v] = dict(ms=ms, gflops=rate)
      print(f'{name:46s} {v:12s} {ms:8.2f} {(f"{rate:8.1f}" if rate else ""):>8s} {xla_ms / ms:11.2f}x')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(out, f, indent=1)


if __name__ == '__main__':
  main()
