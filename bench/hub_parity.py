"""Parity of every registered timm name with timm, on CPU, one name at a time (each in its own process).

For each name: timm's model with random, informative weights (pretrained=False), written by timm's own
`save_for_hf` into a local Hugging Face cache, loaded by fpclass through `hf_hub_download` (HF_HUB_OFFLINE=1),
logits compared with tests/parity.py's check (10x timm's own float32 noise, the same predicted classes); where
timm's own float32 noise on those random weights is above the check's ceiling (deep EfficientNets), both sides
compute in float64 and must agree to parity.FLOAT64_TOL instead.
tests/test_hub_timm.py runs the smallest members; this runs them all.

    python -m bench.hub_parity                         # every timm name not yet in the results file
    python -m bench.hub_parity --pattern 'convnext*'   # a subset (fnmatch on the architecture)
    python -m bench.hub_parity --report                # the table for docs/parity.md, and the verified list

Results go to bench/hub_parity.jsonl (one line per name, the last one counts); --report writes
fpclass/models/timm_verified.py (what `--mode models` shows as verified) and prints the markdown table.
"""
import argparse
import datetime
import fnmatch
import json
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / 'bench' / 'hub_parity.jsonl'
VERIFIED = ROOT / 'fpclass' / 'models' / 'timm_verified.py'
COMMAND = 'python -m bench.hub_parity'
MAX_FLOOR = 1e-3   # tests/parity.py's, for the report


def timm_names() -> list[str]:
  from fpclass import models
  from fpclass.models import hub
  models.get_spec('footprint_cnn')
  specs = [(name, spec) for name, spec in models.REGISTRY.items() if spec.family == 'timm']
  return [name[len(hub.NAME_PREFIX):] for name, _ in specs]


BIG = ('huge', 'xlarge', 'large', '269', '200', '152', '32x32d', '32x16d', '101', 'base')


def cost(arch: str) -> int:
  """A rough order, cheapest first, so that an interrupted run has checked the most names."""
  return next((len(BIG) - i for i, word in enumerate(BIG) if word in arch), 0)


def check_one(arch: str) -> dict:
  """Runs the parity check of `arch` in this process; the result as a dict."""
  from tests import parity
  from tests import timm_reference as tr
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    case = tr.reference_case(arch, tmp, tmp / 'hub')
    _, variables, apply = tr.port(case, tmp / 'hub')
    logits, features = apply(variables, case.x)
    result = tr.agreement(case, logits, features)
    extra = {}
    try:
      parity.check(result)
      passed, problem = True, ''
    except AssertionError as e:
      passed, problem = False, str(e)[:300]
      if result.floor > parity.MAX_FLOOR:   # timm itself too noisy in float32 on these weights: both in float64
        extra['diff64'] = float64_diff(case, tmp / 'hub')
        passed = extra['diff64'] <= parity.FLOAT64_TOL and result.spread >= parity.MIN_SPREAD
        problem = '' if passed else problem
  head = case.module.get_classifier()
  parameters = sum(p.numel() for p in case.module.parameters()) + (1000 - head.out_features) * (head.in_features + 1)
  return dict(arch=arch, passed=passed, problem=problem, diff=result.diff, floor=result.floor, **extra,
              parameters=parameters, input=list(case.x.shape[1:3]), seconds=round(time.perf_counter() - start, 1),
              date=datetime.date.today().isoformat())


def float64_diff(case, cache) -> float:
  """max |port - timm| / scale with both computing in float64 on the same (float32) weights: the check for a
  deep network whose random weights make timm's own float32 logits move by more than parity.MAX_FLOOR under
  the 1e-6 input jitter (its float32 floor), so that a float32 comparison could prove nothing."""
  import numpy as np

  from fpclass.models import hub
  from tests import parity
  from tests import timm_reference as tr
  with tr.offline_cache(cache):
    got = parity.port_logits_float64(hub.NAME_PREFIX + case.arch, case.reference, case.x, num_classes=tr.NUM_CLASSES)
  ref = parity.torch_logits_float64(case.module, case.x)
  return float(parity.max_abs_diff(got, ref) / np.std(ref))


def run(names: list[str], per_process: int = 6) -> None:
  """Checks `names`, `per_process` to a fresh process (so memory is returned), each result appended as a line."""
  for start in range(0, len(names), per_process):
    group = names[start:start + per_process]
    proc = subprocess.Popen([sys.executable, '-m', 'bench.hub_parity', '--one', ','.join(group)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = set()
    for line in proc.stdout:
      if line.startswith('{'):
        row = json.loads(line)
        seen.add(row['arch'])
        _record(row)
    _, stderr = proc.communicate()
    for arch in group:   # what a crash (memory, a missing op) left unchecked
      if arch not in seen:
        _record(dict(arch=arch, passed=False, problem=(stderr.strip().splitlines() or ['?'])[-1][:300],
                     date=datetime.date.today().isoformat()))
        break   # the rest of the group was not reached: the next run takes it up


def _record(row: dict) -> None:
  with open(RESULTS, 'a') as f:
    f.write(json.dumps(row) + '\n')
  print(f"{row['arch']}: {'pass' if row['passed'] else 'FAIL ' + row['problem']} ({row.get('seconds', '?')} s)",
        flush=True)


def latest() -> dict:
  rows = {}
  if RESULTS.exists():
    for line in RESULTS.read_text().splitlines():
      row = json.loads(line)
      rows[row['arch']] = row
  return rows


def report() -> None:
  rows = latest()
  names = timm_names()
  passed = sorted(a for a in names if rows.get(a, {}).get('passed'))
  counted = {a: rows[a]['parameters'] for a in names if rows.get(a, {}).get('parameters')}
  VERIFIED.write_text(
      '"""The timm names whose parity with timm bench/hub_parity.py verified, and the parameter counts it found\n'
      '(with a 1000-class head), written by its --report (docs/parity.md); `--mode models` shows them."""\n\n'
      'VERIFIED = frozenset({\n' + ''.join(f"    '{a}',\n" for a in passed) + '})\n\n'
      'PARAMETERS = {\n' + ''.join(f"    '{a}': {n},\n" for a, n in counted.items()) + '}\n')
  print(f'{len(passed)} of {len(names)} registered timm names pass parity; command: {COMMAND}\n')
  print('| timm name | input (H, W) | max \\|d logit\\| / scale | timm float32 floor | result | seconds | date |')
  print('|---|---|---|---|---|---|---|')
  for arch in names:
    row = rows.get(arch)
    if row is None:
      print(f'| {arch} | - | - | - | not run | - | - |')
      continue
    result = 'pass' if row['passed'] else 'FAIL: ' + row['problem'].replace('|', '/')
    if 'diff64' in row:
      result += f" (float64: {row['diff64']:.1e}; timm's float32 floor is above {MAX_FLOOR:.0e})"
    size = 'x'.join(map(str, row['input'])) if row.get('input') else '-'
    diff = f"{row['diff']:.1e}" if 'diff' in row else '-'
    floor = f"{row['floor']:.1e}" if 'floor' in row else '-'
    print(f"| {arch} | {size} | {diff} | {floor} | {result} | {row.get('seconds', '-')} | {row['date']} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--pattern', default='*', help='fnmatch pattern on timm architecture names')
  parser.add_argument('--one', help='check these comma-separated names here, printing each result as JSON (one process)')
  parser.add_argument('--again', action='store_true', help='check names that already have a result too')
  parser.add_argument('--report', action='store_true')
  args = parser.parse_args()
  if args.one:
    for arch in args.one.split(','):
      print(json.dumps(check_one(arch)), flush=True)
  elif args.report:
    report()
  else:
    done = latest()
    names = [a for a in timm_names() if fnmatch.fnmatch(a, args.pattern) and (args.again or a not in done)]
    run(sorted(names, key=cost))


if __name__ == '__main__':
  main()
