"""What every bench/ script shares: the fpclass and PyTorch trainers, interleaved timing, the report.

Method (docs/performance.md):
- Both frameworks train the same architecture on the same in-memory uint8 data, batch size, optimizer and
  input size, in the same process. fpclass runs its production path (`fpclass.train.steps.CompiledSteps` on a
  `DataParallel` mesh, data on the device, batches gathered by index inside the step); PyTorch gathers
  the batch from a uint8 tensor in memory, normalises it and runs a standard eager/compiled step.
- PyTorch is given its best configuration: each of eager, channels_last, torch.compile and both together
  is warmed up and timed for one round, and the fastest is the reference.
- Rounds alternate between the frameworks, so machine load (a shared machine) hits both alike; img/s is the
  median over rounds and the ratio is the median of the per-round ratios.
- Compile time is the first call's time minus a steady step's time: for fpclass with the persistent
  compilation cache off (cold), for PyTorch the torch.compile warm-up.
- On GPU the report adds model FLOP utilisation: 3 x the forward pass's FLOPs (XLA's cost analysis) per
  image, times img/s, over the device's dense peak for the precision.
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault('FPCLASS_JAX_CACHE', '0')  # compile times are cold unless a script says otherwise

from fpclass.config.run import RunSettings  # noqa: E402
from fpclass.runtime.process import keep_host_buffers  # noqa: E402

keep_host_buffers()  # as launch.py does, before JAX starts its threads

import jax  # noqa: E402
import numpy as np  # noqa: E402

# Dense peak FLOP/s per device for bf16 and for fp32 (TF32 tensor cores: XLA's default for f32 convolutions
# and matmuls on these GPUs), from NVIDIA's data sheets.
PEAK_FLOPS = {'H100 PCIe': (756e12, 378e12), 'H100': (989e12, 495e12), 'H200': (989e12, 495e12),
              'A100': (312e12, 156e12), 'L4': (121e12, 60e12)}


def parse_args(description: str, add_arguments=None, **defaults) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  if add_arguments is not None:
    add_arguments(p)
  gpu = jax.default_backend() != 'cpu'
  p.add_argument('--batch-size', type=int, default=defaults.get('batch_size', 32))
  p.add_argument('--steps', type=int, default=defaults.get('steps_gpu' if gpu else 'steps', 20),
                 help='steps per round (the synthetic training set is steps x batch images)')
  p.add_argument('--rounds', type=int, default=defaults.get('rounds', 5))
  p.add_argument('--precision', choices=('fp32', 'bf16'), default='bf16' if gpu and defaults.get('bf16_on_gpu') else 'fp32',
                 help='compute precision of both frameworks (bf16 is measured even on CPU, where fpclass '
                      'itself trains bf16 requests in fp32)')
  p.add_argument('--loops', default='step,scan' if gpu else 'step',
                 help='fpclass loop forms to time: step, scan or both')
  p.add_argument('--torch-variants', default='eager,channels_last,compile,compile+channels_last')
  p.add_argument('--eval-batch-size', type=int, default=defaults.get('eval_batch_size', 256))
  p.add_argument('--no-torch', action='store_true', help='time fpclass only')
  p.add_argument('--json', type=pathlib.Path, help='also write the results here')
  return p.parse_args()


def environment() -> dict:
  device = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    cpu = next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  import torch
  return dict(date=datetime.date.today().isoformat(), backend=jax.default_backend(), device=device.device_kind,
              device_count=jax.device_count(), cpu=cpu, cpu_count=os.cpu_count(), jax=jax.__version__,
              torch=torch.__version__, load_average=os.getloadavg()[0] if hasattr(os, 'getloadavg') else None,
              command=' '.join([pathlib.Path(sys.argv[0]).as_posix(), *sys.argv[1:]]))


def check_same_size(config, image_shape, num_classes: int, make_torch_model) -> int:
  """Exits unless fpclass's model and the PyTorch twin have the same number of parameters."""
  from fpclass import models
  from fpclass.train import optim
  model = models.create_model(config.model, num_classes)
  key = jax.random.PRNGKey(0)
  variables = jax.eval_shape(lambda: model.init({'params': key, 'dropout': key},
                                                jax.numpy.zeros((1, *image_shape)), train=False))
  n_fpclass = optim.count_params(variables['params'])
  n_torch = sum(p.numel() for p in make_torch_model().parameters())
  if n_fpclass != n_torch:
    raise SystemExit(f'{config.model.name}: fpclass has {n_fpclass:,} parameters, the PyTorch twin {n_torch:,}; '
                     'the benchmark needs the same architecture on both sides')
  return n_fpclass


def synthetic_data(n: int, image_shape, num_classes: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, *image_shape), dtype=np.uint8),
          rng.integers(0, num_classes, n).astype(np.int32))


def _block(tree):
  return jax.block_until_ready(tree)


class FpclassTrainer:
  """fpclass's production train step for `config` on in-memory data, in loop form `form`."""

  def __init__(self, config, images, labels, num_classes: int, form: str, compute_backend: str | None = None):
    from fpclass.runtime.sharding import DataParallel
    from fpclass.train.sampling import epoch_order
    from fpclass.train.steps import CompiledSteps
    from fpclass.train.task import build_task
    self.batch = int(config.train.batch_size)
    self.steps = len(images) // self.batch
    names = tuple(str(i) for i in range(num_classes))
    self.task = build_task(RunSettings.from_config(config), names, labels, self.steps, backend=compute_backend)
    parallel = DataParallel.over()
    parallel.check_batch_size(self.batch)
    self.compiled = CompiledSteps(self.task, parallel, form)
    self.weights = self.compiled.arguments()   # the train programs' arguments (class weights, rate, smoothing)
    self.form = form
    start = time.perf_counter()
    self.state = _block(self.compiled.init(jax.random.PRNGKey(0), images.shape[1:]))
    self.init_seconds = time.perf_counter() - start
    self.x, self.y = parallel.replicate((images, labels))
    self.order = parallel.replicate(epoch_order(0, 0, len(images), self.batch))
    self.key = jax.random.PRNGKey(1)
    self.name = f'fpclass ({form})'

  def round(self):
    """One epoch of `steps` steps, to completion."""
    if self.form == 'scan':
      self.state, metrics = self.compiled.train_epoch(self.state, self.x, self.y, self.order, self.key, self.weights)
    else:
      for i in range(self.steps):
        self.state, metrics = self.compiled.train_step(self.state, self.x, self.y, self.order, i, self.key, self.weights)
    _block((self.state, metrics))

  def first_call(self):
    """Compiles and runs the program once (one step, or one scanned epoch); returns its seconds."""
    start = time.perf_counter()
    if self.form == 'scan':
      self.state, metrics = self.compiled.train_epoch(self.state, self.x, self.y, self.order, self.key, self.weights)
    else:
      self.state, metrics = self.compiled.train_step(self.state, self.x, self.y, self.order, 0, self.key, self.weights)
    _block((self.state, metrics))
    return time.perf_counter() - start

  def flops_per_image(self, image_shape) -> float | None:
    """3 x forward FLOPs per image, from XLA's cost analysis of the predict program."""
    batch = jax.ShapeDtypeStruct((self.batch, *image_shape), np.uint8)
    try:
      cost = jax.jit(self.task.predict).lower(self.state.params, self.state.batch_stats, batch).compile() \
          .cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      return 3.0 * float(cost['flops']) / self.batch
    except Exception:  # cost analysis is best effort; some backends do not report FLOPs
      return None

  def predictor(self, images):
    params, stats = self.state.params, self.state.batch_stats
    return lambda: self.compiled.predict(params, stats, images)


class TorchTrainer:
  """The PyTorch reference: same data in memory (NCHW uint8), same batch order, one standard step."""

  def __init__(self, make_model, images, labels, batch: int, optimizer: str, lr: float, mean, std,
               precision: str, variant: str):
    import torch
    self.torch = torch
    self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    torch.set_float32_matmul_precision('high')  # TF32 on GPU, as XLA's default precision for f32 there
    self.channels_last = 'channels_last' in variant
    self.fmt = torch.channels_last if self.channels_last else torch.contiguous_format
    model = make_model().to(self.device).to(memory_format=self.fmt)
    self.model = model
    params = model.parameters()
    self.opt = (torch.optim.Adam(params, lr) if optimizer == 'adam'
                else torch.optim.SGD(params, lr, momentum=0.9))
    self.forward = torch.compile(model) if 'compile' in variant else model
    self.x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(self.device)
    self.y = torch.from_numpy(labels.astype(np.int64)).to(self.device)
    c = images.shape[-1]
    self.mean = torch.tensor(np.broadcast_to(np.asarray(mean, np.float32), (c,)).copy(), device=self.device).view(1, c, 1, 1)
    self.std = torch.tensor(np.broadcast_to(np.asarray(std, np.float32), (c,)).copy(), device=self.device).view(1, c, 1, 1)
    self.batch = batch
    self.steps = len(images) // batch
    self.order = torch.from_numpy(np.random.default_rng(0).permutation(len(images))[:self.steps * batch]
                                  .reshape(self.steps, batch)).to(self.device)
    self.autocast = precision == 'bf16'
    self.loss_fn = torch.nn.CrossEntropyLoss()
    self.name = f'torch ({variant})'

  def _inputs(self, index):
    x = self.x[index].float().div_(255.0).sub_(self.mean).div_(self.std)
    return x.contiguous(memory_format=self.fmt)

  def _step(self, i):
    torch = self.torch
    index = self.order[i]
    x = self._inputs(index)
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
      loss = self.loss_fn(self.forward(x).float(), self.y[index])
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()

  def _sync(self):
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize()

  def first_call(self):
    self.model.train()
    start = time.perf_counter()
    self._step(0)
    self._sync()
    return time.perf_counter() - start

  def round(self):
    self.model.train()
    for i in range(self.steps):
      self._step(i)
    self._sync()

  def predictor(self, images):
    torch = self.torch
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(self.device)
    self.model.eval()

    def predict():
      with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
        logits = self.forward(((x.float() / 255.0 - self.mean) / self.std).contiguous(memory_format=self.fmt))
      return logits.float().cpu().numpy()
    return predict


def time_round(trainer) -> float:
  start = time.perf_counter()
  trainer.round()
  return time.perf_counter() - start


def warm_up(trainer) -> dict:
  """First call (compile), then one untimed round; returns compile seconds and one timed round."""
  first = trainer.first_call()
  trainer.round()
  seconds = time_round(trainer)
  step = seconds / trainer.steps
  compile_seconds = first - (seconds if getattr(trainer, 'form', 'step') == 'scan' else step)
  return dict(compile_seconds=max(0.0, compile_seconds), round_seconds=seconds)


def pick_torch(make_torch, variants, out) -> list:
  """Warms up every PyTorch variant and times one round of each; returns the trainers, fastest first."""
  ranked = []
  for variant in variants:
    try:
      trainer = make_torch(variant)
      timing = warm_up(trainer)
    except Exception as e:  # e.g. torch.compile without a working C++ toolchain
      out['torch_variants'][variant] = dict(error=f'{type(e).__name__}: {str(e)[:200]}')
      print(f'  torch {variant}: unavailable ({type(e).__name__}: {str(e)[:120]})', flush=True)
      continue
    img_s = trainer.steps * trainer.batch / timing['round_seconds']
    out['torch_variants'][variant] = dict(img_s=img_s, compile_seconds=timing['compile_seconds'])
    print(f'  torch {variant}: {img_s:.1f} img/s (one round), compile {timing["compile_seconds"]:.1f}s', flush=True)
    ranked.append((timing['round_seconds'], len(ranked), trainer))
  return [trainer for _, _, trainer in sorted(ranked)]


def interleave(trainers, rounds: int) -> dict:
  """Alternates one round of each trainer, `rounds` times; {name: [seconds per round]}."""
  times = {t.name: [] for t in trainers}
  for _ in range(rounds):
    for t in trainers:
      times[t.name].append(time_round(t))
  return times


def time_inference(predictors: dict, rounds: int, batch: int) -> dict:
  """{name: img/s}, median over rounds alternating between frameworks, after one warm-up call each."""
  for predict in predictors.values():
    predict()
  seconds = {name: [] for name in predictors}
  for _ in range(rounds):
    for name, predict in predictors.items():
      start = time.perf_counter()
      predict()
      seconds[name].append(time.perf_counter() - start)
  return {name: batch / statistics.median(s) for name, s in seconds.items()}


def peak_flops(precision: str) -> float | None:
  if jax.default_backend() != 'gpu':
    return None
  kind = jax.devices()[0].device_kind
  for name, (bf16, fp32) in PEAK_FLOPS.items():  # 'H100 PCIe' is listed before 'H100'
    if name in kind:
      return bf16 if precision == 'bf16' else fp32
  return None


def run_benchmark(args, *, title: str, config, image_shape, num_classes: int, make_torch_model,
                  torch_optimizer: str, lr: float, compute_backend: str | None = None) -> dict:
  """Times fpclass against PyTorch on one model; prints the table and returns the results."""
  env = environment()
  out = dict(title=title, env=env, batch_size=args.batch_size, precision=args.precision, image_shape=list(image_shape),
             steps_per_round=args.steps, rounds=args.rounds, torch_variants={}, fpclass={}, torch=None)
  print(f'{title}: {image_shape} batch {args.batch_size}, {torch_optimizer}, {args.precision} | {env["backend"]} '
        f'{env["device"]} x{env["device_count"]} ({env["cpu"]}, {env["cpu_count"]} cores) | jax {env["jax"]}, '
        f'torch {env["torch"]} | {env["date"]}, load average {env["load_average"]}', flush=True)
  images, labels = synthetic_data(args.steps * args.batch_size, image_shape, num_classes)
  config.train.batch_size = args.batch_size
  config.train.precision = args.precision

  if args.precision == 'bf16' and compute_backend is None:
    compute_backend = 'gpu'  # measure bf16 compute even on CPU, where fpclass's own runs train bf16 as fp32
  trainers = []
  for form in [f.strip() for f in args.loops.split(',') if f.strip()]:
    trainer = FpclassTrainer(config, images, labels, num_classes, form, compute_backend)
    timing = warm_up(trainer)
    out['fpclass'][form] = dict(init_seconds=trainer.init_seconds, compile_seconds=timing['compile_seconds'])
    print(f'  fpclass {form}: init {trainer.init_seconds:.1f}s, compile {timing["compile_seconds"]:.1f}s, '
          f'{args.steps * args.batch_size / timing["round_seconds"]:.1f} img/s (one round)', flush=True)
    trainers.append(trainer)
  reference, torch_trainers = None, []
  if not args.no_torch:
    def make_torch(variant):
      return TorchTrainer(make_torch_model, images, labels, args.batch_size, torch_optimizer, lr,
                          config.data.mean, config.data.std, args.precision, variant)
    torch_trainers = pick_torch(make_torch, [v.strip() for v in args.torch_variants.split(',') if v.strip()], out)
    reference = torch_trainers[0] if torch_trainers else None

  times = interleave(trainers + ([reference] if reference else []), args.rounds)
  n = args.steps * args.batch_size
  img_s = {name: n / statistics.median(s) for name, s in times.items()}
  flops = trainers[0].flops_per_image(image_shape)
  peak = peak_flops(args.precision)
  out['flops_per_image'] = flops
  print(f'\ntraining, img/s (median of {args.rounds} interleaved rounds of {args.steps} steps)')
  for t in trainers:
    row = dict(img_s=img_s[t.name], round_seconds=times[t.name])
    line = f'  {t.name:32s} {img_s[t.name]:10.1f}'
    if reference:
      ratios = [r / f for f, r in zip(times[t.name], times[reference.name])]
      row['ratio_vs_torch'] = statistics.median(ratios)
      line += f'   x{row["ratio_vs_torch"]:.2f} PyTorch (rounds {min(ratios):.2f}-{max(ratios):.2f})'
    if flops and peak:
      row['mfu'] = img_s[t.name] * flops / peak
      line += f'   MFU {100 * row["mfu"]:.1f}%'
    out['fpclass'][t.form].update(row)
    print(line)
  if reference:
    out['torch'] = dict(variant=reference.name, img_s=img_s[reference.name], round_seconds=times[reference.name])
    line = f'  {reference.name:32s} {img_s[reference.name]:10.1f}'
    if flops and peak:
      out['torch']['mfu'] = img_s[reference.name] * flops / peak
      line += f'   MFU {100 * out["torch"]["mfu"]:.1f}%'
    print(line)
  if flops:
    print(f'  model FLOPs per training image (3 x forward): {flops / 1e9:.3f} GFLOP; fpclass sustains '
          f'{img_s[trainers[0].name] * flops / 1e9:.1f} GFLOP/s')

  eval_images, _ = synthetic_data(args.eval_batch_size, image_shape, num_classes, seed=1)
  # Every PyTorch variant is timed for inference too, and the fastest is the reference.
  predictors = {trainers[0].name: trainers[0].predictor(eval_images)}
  predictors.update({t.name: t.predictor(eval_images) for t in torch_trainers})
  infer = time_inference(predictors, args.rounds, args.eval_batch_size)
  best_torch = max((name for name in infer if name.startswith('torch')), key=infer.get, default=None)
  out['inference'] = dict(batch_size=args.eval_batch_size, img_s=infer, torch_reference=best_torch)
  print(f'\ninference, img/s (batch {args.eval_batch_size}, host uint8 in, logits out; median of {args.rounds})')
  for name, value in infer.items():
    line = f'  {name:32s} {value:10.1f}'
    if best_torch and name == trainers[0].name:
      out['inference']['ratio_vs_torch'] = value / infer[best_torch]
      line += f'   x{out["inference"]["ratio_vs_torch"]:.2f} the fastest PyTorch variant'
    print(line)
  if args.json:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=float))
  return out
