"""Parity of every registered timm name with timm, on CPU, one name at a time (each in its own process).

For each name: timm's model with random, informative weights (pretrained=False), written by timm's own
`save_for_hf` into a local Hugging Face cache, loaded by fpclass through `hf_hub_download` (HF_HUB_OFFLINE=1),
logits compared with tests/parity.py's check (10x timm's own float32 noise, the same predicted classes). Where
timm itself is chaotic on those random weights (its float32 noise above the check's ceiling: the deep
EfficientNets), the check runs again on weights whose residual branches are damped (`damped_case`).
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
    result, extra = compare(case, tmp / 'hub'), {}
    if result.floor > parity.MAX_FLOOR and residual_norms(case.module):
      extra = dict(damping=DAMPING, undamped_floor=result.floor)
      case = damped_case(arch, tmp / 'damped', tmp / 'hub_damped')
      result = compare(case, tmp / 'hub_damped')
    try:
      parity.check(result)
      passed, problem = True, ''
    except AssertionError as e:
      passed, problem = False, str(e)[:300]
  head = case.module.get_classifier()
  parameters = sum(p.numel() for p in case.module.parameters()) + (1000 - head.out_features) * (head.in_features + 1)
  return dict(arch=arch, passed=passed, problem=problem, diff=result.diff, floor=result.floor, **extra,
              parameters=parameters, input=list(case.x.shape[1:3]), seconds=round(time.perf_counter() - start, 1),
              date=datetime.date.today().isoformat())


def compare(case, cache):
  """The agreement of fpclass's port, loaded from `cache`, with timm's outputs in `case`."""
  from tests import timm_reference as tr
  _, variables, apply = tr.port(case, cache)
  logits, features = apply(variables, case.x)
  return tr.agreement(case, logits, features)


DAMPING = 0.1   # the residual branches' scale in a damped reference


def residual_norms(module) -> list:
  """The last BatchNorm of each of timm's blocks with a residual connection (`has_skip`: EfficientNet's)."""
  import torch
  return [[m for m in block.children() if isinstance(m, torch.nn.BatchNorm2d)][-1]
          for block in module.modules() if getattr(block, 'has_skip', False)]


def damped_case(arch, tmp: pathlib.Path, cache: pathlib.Path):
  """tests/timm_reference's case of `arch` with each residual branch's last BatchNorm scaled by DAMPING (and
  the BN statistics drawn again from the damped network): for a deep network whose random weights make timm
  chaotic (its float32 logits move by more than parity.MAX_FLOOR under the 1e-6 input jitter, so that the
  check could prove nothing). The architecture and every tensor's role are the same; only their scale differs."""
  import torch

  from fpclass.models import hub
  from tests import parity
  from tests import timm_reference as tr
  module, x = tr.timm_model(arch, tr.size_for(arch))
  with torch.no_grad():
    for norm in residual_norms(module):
      norm.weight.mul_(DAMPING)
      norm.bias.mul_(DAMPING)
  parity.informative_torch_bn(module, x)
  repo = f'timm/{arch}.{tr.TAG}'
  tr.place_in_cache(tr.save_hub_folder(module, tmp / arch), cache, repo)
  features = tr.FEATURES[tr.family_of(arch)]
  out, feats = parity.torch_forward(module, x, features)
  jittered_out, jittered_feats = parity.torch_forward(module, parity.jittered(x), features)
  return tr.Case(arch, f'{hub.PREFIX}{repo}', module, x, out, feats, jittered_out, jittered_feats)


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
    if 'damping' in row:
      result += (f" (residual branches x{row['damping']}: timm's float32 floor on the undamped weights is "
                 f"{row['undamped_floor']:.1e})")
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
