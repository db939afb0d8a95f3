"""Installs what the tests need beyond the test extra, when it is missing: Debian's chromium and chromium-driver,
for the upload page tested in a real browser (tests/test_serve_browser.py), Debian's postgresql, the server a
shared `--mode auto` study is tested against (tests/test_auto.py), Debian's hey, the load generator of the GPU
session's dry run (tests/test_gpu_session.py), and fastai's learning-rate finder as
a reference (tests/test_lr_find.py), installed without its declared dependencies (they pull in spacy; the
finder's functions need none of it).

    python -m tests.system_packages      # part of the README's test command and of .ci/run

A no-op when all are there. Installing chromium needs root (apt-get); otherwise it prints the command to run.
"""
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

# executable -> Debian package; hey: bench/serve_load.py's load generator, run by tests/test_gpu_session.py
PACKAGES = {'chromium': 'chromium', 'chromedriver': 'chromium-driver', 'hey': 'hey'}
# fastai and the packages its schedule module imports, at the versions the lr_find test was written against.
FASTAI = ('fastai==2.8.12', 'fastcore==2.2.39', 'fastprogress==1.0.3', 'fastdownload==0.0.8', 'fasttransform==0.0.5',
          'plum-dispatch==2.10.1', 'beartype==0.23.1')


def install_fastai() -> None:
  if importlib.util.find_spec('fastai') is None:
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', *FASTAI], check=True,
                   stdin=subprocess.DEVNULL)


def postgres_bin() -> pathlib.Path | None:
  """The folder holding PostgreSQL's initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
  found = shutil.which('initdb')
  if found and shutil.which('pg_ctl'):
    return pathlib.Path(found).parent
  versions = sorted(pathlib.Path('/usr/lib/postgresql').glob('*/bin/initdb'), key=lambda p: p.parts[-3])
  return versions[-1].parent if versions else None


def missing() -> list[str]:
  needed = [package for command, package in PACKAGES.items() if shutil.which(command) is None]
  return needed + (['postgresql'] if postgres_bin() is None else [])


def main() -> int:
  install_fastai()
  needed = missing()
  if not needed:
    return 0
  command = ['apt-get', 'install', '-y', '--no-install-recommends', *needed]
  if shutil.which('apt-get') is None or os.geteuid() != 0:
    print(f'tests need {", ".join(needed)}: run  sudo apt-get update && sudo {" ".join(command)}', file=sys.stderr)
    return 1
  env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
  subprocess.run(['apt-get', 'update', '-qq'], check=True, env=env, stdin=subprocess.DEVNULL)
  subprocess.run(command, check=True, env=env, stdin=subprocess.DEVNULL)
  return 0 if not missing() else 1


if __name__ == '__main__':
  sys.exit(main())
