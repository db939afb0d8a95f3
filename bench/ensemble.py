"""Ensembles and soups against the best single model, all cross-fitted (issue 41's bench).

    python -m bench.ensemble [--out runs/bench-ensemble] [--data footprint digits] [--epochs 6]

For each data set, `--mode sweep` (5 folds x 1 seed, every variant from the same seed, so variants that share
their model keys share their initialisation and can be souped), then `--mode ensemble` on it:
- footprint: the embedded synthetic footprints, reduced as docs/sweeps.md's 11-config run (48x32 images, a fifth
  of the data), variants exp0, exp1, exp3, exp5 and exp7 of configs/footprint_sweep.py (exp0 and exp5, and exp3
  and exp7, share their model); then --mode submit of the best single variant (its fold models), the ensemble and
  the soup, scored on the synthetic set's hidden test labels;
- digits (scikit-learn's 8x8 digits, a set this project makes no claims on): configs/digits.py, learning rate x
  rotation (6 variants of one model).
The tables and the JSON go to --out; docs/ensembles.md records them with the command and the date.
"""
import argparse
import json
import pathlib
import re
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fpclass.config.variants import variant_spec  # noqa: E402

FOOTPRINT_VARIANTS = 'exp0,exp1,exp3,exp5,exp7'
DIGITS_GRID = {'train.learning_rate': (3e-4, 1e-3, 3e-3), 'augment.rotation': (0.0, 8.0)}


def _launch(args: list[str], log: pathlib.Path) -> tuple[float, str]:
  """Runs launch.py with `args`, its output in `log`; returns (wall seconds, output)."""
  start = time.perf_counter()
  done = subprocess.run([sys.executable, str(REPO / 'launch.py'), *args], cwd=REPO, capture_output=True, text=True)
  log.write_text(done.stdout + done.stderr)
  if done.returncode:
    raise SystemExit(f'launch.py {" ".join(args)} failed ({done.returncode}); see {log}')
  return time.perf_counter() - start, done.stdout


def _digits_variants() -> tuple[str, ...]:
  return tuple(variant_spec(f'lr{lr:g}-rot{rotation:g}', {'train.learning_rate': lr, 'augment.rotation': rotation})
               for lr in DIGITS_GRID['train.learning_rate'] for rotation in DIGITS_GRID['augment.rotation'])


def data_sets(epochs: int) -> dict:
  """name -> (the sweep's config flags, whether the data has hidden test labels to submit against)."""
  common = [f'--config.train.epochs={epochs}', '--config.train.tensorboard=False', '--config.sweep.seeds=(0,)']
  return {
      'footprint': ([f'--config=configs/footprint_sweep.py:{FOOTPRINT_VARIANTS}', '--config.data.image_size=(48,32)',
                     '--config.data.synthetic.n_class0=169', '--config.data.synthetic.n_class1=146',
                     '--config.data.synthetic.n_test=300', *common], True),
      'digits': (['--config=configs/digits.py', f'--config.sweep.variants={_digits_variants()!r}', *common], False)}


def hidden_accuracy(workdir: pathlib.Path, log: pathlib.Path, *config: str) -> float:
  """Submit's accuracy on the synthetic set's hidden test labels, uncalibrated (the ensemble has no temperature);
  `config`: the --config flag and its overrides, for a folder without its own metadata.json."""
  _, out = _launch([*config, f'--workdir={workdir}', '--mode=submit', '--config.submit.calibrated=False'], log)
  return float(re.search(r'hidden-label accuracy ([0-9.]+)', out).group(1))


def run_one(name: str, flags: list[str], submits: bool, out: pathlib.Path) -> dict:
  folder = out / name
  folder.mkdir(parents=True, exist_ok=True)
  sweep_wall, _ = _launch([*flags, '--mode=sweep', f'--workdir={folder}'], out / f'{name}-sweep.log')
  ensemble_wall, _ = _launch([*flags, '--mode=ensemble', f'--workdir={folder}'], out / f'{name}-ensemble.log')
  record = json.loads((folder / 'ensemble' / 'ensemble.json').read_text())
  result = dict(data=name, sweep_seconds=sweep_wall, ensemble_seconds=ensemble_wall, candidates=record['candidates'],
                weights=record['weights'], table=record['table'], notes=record['notes'],
                soup=(record['soup'] or {}).get('folds', []))
  if submits:
    single = record['table'][0]['what']
    config = f'--config=configs/workdir.py:{folder / single / "fold0"}'
    result['hidden'] = {
        'best single': hidden_accuracy(folder / single, out / f'{name}-submit-single.log', config,
                                       '--config.submit.average_folds=True'),
        'ensemble': hidden_accuracy(folder / 'ensemble', out / f'{name}-submit-ensemble.log'),
        **({'soup': hidden_accuracy(folder / 'ensemble' / 'soup', out / f'{name}-submit-soup.log')}
           if (folder / 'ensemble' / 'soup').is_dir() else {})}
  return result


def table(result: dict) -> str:
  hidden = result.get('hidden')
  lines = ['| model | what | models | accuracy, cross-fitted (95% CI) | vs best single (95% CI) | in-sample | '
           'parameters | ms per image |' + (' hidden test accuracy |' if hidden else ''),
           '|---|---|---|---|---|---|---|---|' + ('---|' if hidden else '')]
  for r in result['table']:
    lines.append(f'| {r["model"]} | {r["what"]} | {r["models"]} | {r["cross-fitted"]} | {r["vs best single"]} | '
                 f'{r["in-sample"]:.4f} | {r["parameters"]:,} | {r["ms per image"]:.3f} |'
                 + (f' {hidden[r["model"]]:.4f} |' if hidden and r['model'] in hidden else ''))
  tried = [a for f in result['soup'] for a in f['averages']]
  if tried:
    kept = sum(a['kept'] for a in tried)
    change = sum(a['after'] - a['before'] for a in tried) / len(tried)
    lines += ['', f'Soups: {len(tried)} averages tried on the folds\' held-out images (all of each fold), {kept} kept; '
              f'mean change of the score when an ingredient was averaged in: {change:+.4f} (worst '
              f'{min(a["after"] - a["before"] for a in tried):+.4f}).']
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', type=pathlib.Path, default=REPO / 'runs' / 'bench-ensemble')
  p.add_argument('--data', nargs='+', default=['footprint', 'digits'], choices=['footprint', 'digits'])
  p.add_argument('--epochs', type=int, default=6)
  args = p.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  specs = data_sets(args.epochs)
  results = []
  for name in args.data:
    results.append(run_one(name, *specs[name], args.out))
    print(f'\n{name}: sweep {results[-1]["sweep_seconds"]:.0f} s, ensemble {results[-1]["ensemble_seconds"]:.0f} s')
    print(table(results[-1]), flush=True)
  (args.out / 'ensemble.json').write_text(json.dumps(results, indent=2))
  (args.out / 'ensemble.md').write_text('\n\n'.join(f'### {r["data"]}\n\n{table(r)}' for r in results) + '\n')


if __name__ == '__main__':
  main()
