"""What the repository holds: the files the project means to have, and nothing a run, a bench or a profiler wrote.

The root is a fixed list. Run output lives under a workdir or a bench's --out (`runs/` by default, ignored), raw
bench results under bench/results/, and what tools write on their own (onnxruntime's profile traces, coverage,
caches) is ignored by .gitignore.
"""
import pathlib
import shutil
import subprocess

import pytest

from tests.conftest import REPO

# Every entry the project means to have at its root, tracked or not (the ignored ones aside).
ROOT = frozenset(['.ci', '.dockerignore', '.gitignore', 'CONTRIBUTING.md', 'Containerfile', 'LICENSE', 'README.md',
                  'bench', 'configs', 'container', 'docs', 'fpclass', 'launch.py', 'pyproject.toml', 'tests'])


def _git(*args, cwd=REPO) -> list[str]:
  done = subprocess.run(['git', *args], cwd=cwd, capture_output=True, text=True, check=True)
  return [line for line in done.stdout.splitlines() if line]


def unexpected_root_entries(checkout: pathlib.Path) -> list[str]:
  """Root entries of `checkout` that git tracks or would add (not ignored) and that are not in ROOT."""
  files = _git('ls-files', '--cached', '--others', '--exclude-standard', cwd=checkout)
  return sorted({f.split('/')[0] for f in files} - ROOT)


@pytest.fixture(scope='module')
def checkout():
  if shutil.which('git') is None or not (REPO / '.git').exists():
    pytest.skip('not a git checkout')
  return REPO


def test_the_root_holds_only_what_the_project_means_to_have(checkout):
  assert unexpected_root_entries(checkout) == []


def test_the_root_rule_sees_a_stray_file_and_gitignore_covers_profiler_traces(tmp_path, checkout):
  """A planted stray file at the root is found; a trace named as onnxruntime names it, and a profile, are not."""
  subprocess.run(['git', 'init', '-q', str(tmp_path)], check=True)
  shutil.copy(REPO / '.gitignore', tmp_path / '.gitignore')
  for name in ('README.md', 'results.json', 'onnxruntime_profile__2026-11-27_05-47-44_352.json', 'train.prof'):
    (tmp_path / name).write_text('{}')
  (tmp_path / 'runs').mkdir()
  (tmp_path / 'runs' / 'metrics.csv').write_text('epoch\n')
  assert unexpected_root_entries(tmp_path) == ['results.json']


def test_no_measured_json_sits_in_docs(checkout):
  """docs/ holds the measured tables; their raw results live in bench/results/ (its README indexes them)."""
  assert [f for f in _git('ls-files', 'docs') if f.endswith('.json')] == []


def unlisted_results(results: pathlib.Path) -> list[str]:
  """Files under bench/results/ that its README's tables do not list (each row names a file within its day)."""
  text = (results / 'README.md').read_text()
  listed, day = set(), None
  for line in text.splitlines():
    if line.startswith('## '):
      day = line[3:].strip()
    elif line.startswith('| `') and day:
      listed.add(f'{day}/{line.split("`")[1]}')
  return sorted(f.relative_to(results).as_posix() for f in results.rglob('*')
                if f.is_file() and f.name != 'README.md' and f.relative_to(results).as_posix() not in listed)


def test_the_results_index_lists_every_raw_result(tmp_path):
  assert unlisted_results(REPO / 'bench' / 'results') == []
  (tmp_path / '2026-01-01').mkdir()
  (tmp_path / 'README.md').write_text('## 2026-01-01\n\n| file |\n|---|\n| `a.json` |\n')
  (tmp_path / '2026-01-01' / 'a.json').write_text('{}')
  (tmp_path / '2026-01-01' / 'b.json').write_text('{}')
  assert unlisted_results(tmp_path) == ['2026-01-01/b.json']
