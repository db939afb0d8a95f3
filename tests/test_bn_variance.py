"""torchvision ports update BatchNorm's running variance as torch does (issue 12, part 5).

torch normalises a training batch with its biased variance but adds the unbiased one (times n / (n - 1)) to
running_var; Flax's BatchNorm adds the biased one. A port fine-tuned on the same batches as torch must end
with torch's running statistics, or its evaluation outputs drift. Here both sides take 3 SGD steps from the
same weights on the same batches (train mode, BN updating), then compare evaluation logits. The same run
with Flax's BatchNorm put back shows the test can fail.

Each residual branch is damped (the gamma of its last BN times 0.2, the spirit of zero-init-residual
training): undamped, this random BN network is chaotic under SGD, and float32 differences of 1e-5 in the
first step's gradients grow to 1e-3 in the stem's weights within three steps, the size of the effect tested.
`python -m pytest -n0 -q tests/test_bn_variance.py -s` prints the figures.
"""
import flax.linen as nn
import jax
import numpy as np
import optax
import torch
import torchvision

from fpclass.models.architectures import torchvision_resnet
from tests import parity

CLASSES, LR, STEPS = 5, 0.05, 3
BATCH, SIZE = 8, 32        # at 32x32, layer4's maps are 1x1: n = 8 values per channel, n / (n - 1) = 1.14
TOL = 1e-5                 # max |logit difference| / logit scale
DAMPING = 0.2


def batches(seed=0):
  rng = np.random.default_rng(seed)
  train = [(rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32), rng.integers(0, CLASSES, BATCH))
           for _ in range(STEPS)]
  return train, rng.normal(size=(4, SIZE, SIZE, 3)).astype(np.float32)


def torch_fine_tuned(module, train, evaluation):
  """(evaluation logits, layer4.1.bn2.running_var) after torch's own SGD steps in train mode."""
  module.train()
  optimizer = torch.optim.SGD(module.parameters(), lr=LR)
  for x, y in train:
    optimizer.zero_grad()
    logits = module(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()
    optimizer.step()
  module.eval()
  return parity.torch_forward(module, evaluation, {})[0], module.layer4[1].bn2.running_var.detach().numpy()


def fpclass_fine_tuned(path, train, evaluation):
  """The same for the port loaded from torch's file: plain SGD on the mean cross-entropy."""
  model, variables = parity.build('resnet18', path, num_classes=CLASSES, image_shape=(SIZE, SIZE, 3))

  @jax.jit
  def step(params, stats, x, y):
    def loss(params):
      (logits, _), updates = model.apply({'params': params, 'batch_stats': stats}, x, train=True,
                                         mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates['batch_stats']
    grads, stats = jax.grad(loss, has_aux=True)(params)
    return jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads), stats

  params, stats = variables['params'], variables['batch_stats']
  for x, y in train:
    params, stats = step(params, stats, x, y)
  logits, _ = jax.jit(model.apply)({'params': params, 'batch_stats': stats}, evaluation)
  return np.asarray(logits), np.asarray(stats['layer4_1']['bn2']['var'])


def test_fine_tuned_resnet18_matches_torch_fine_tuned_on_the_same_batches(tmp_path, monkeypatch):
  torch.manual_seed(0)
  module = torchvision.models.resnet18(weights=None, num_classes=CLASSES)
  module = parity.randomise_torch_bn(parity.randomise_torch_weights(module))
  with torch.no_grad():
    for block in (*module.layer1, *module.layer2, *module.layer3, *module.layer4):
      block.bn2.weight.mul_(DAMPING)
  path = tmp_path / 'resnet18.pth'
  torch.save(module.state_dict(), path)
  train, evaluation = batches()
  ref_logits, ref_var = torch_fine_tuned(module, train, evaluation)
  scale = float(np.max(np.abs(ref_logits)))

  logits, var = fpclass_fine_tuned(path, train, evaluation)
  logit_rel = parity.max_abs_diff(logits, ref_logits) / scale
  var_rel = float(np.max(np.abs(var - ref_var) / ref_var))

  # Flax's own BatchNorm (biased running variance) in its place: the mutation this test guards against.
  monkeypatch.setattr(torchvision_resnet, 'BatchNorm', nn.BatchNorm)
  flax_logits, flax_var = fpclass_fine_tuned(path, train, evaluation)
  flax_logit_rel = parity.max_abs_diff(flax_logits, ref_logits) / scale
  flax_var_rel = float(np.max(np.abs(flax_var - ref_var) / ref_var))
  print(f'\nlogit scale {scale:.3g}; max |d logit| / scale: {logit_rel:.1e} (Flax BatchNorm: {flax_logit_rel:.1e}); '
        f'layer4.1.bn2 running_var max rel: {var_rel:.1e} (Flax BatchNorm: {flax_var_rel:.1e})')
  assert var_rel <= 1e-4 and flax_var_rel > 1e-3
  assert logit_rel <= TOL and flax_logit_rel > 100 * TOL
