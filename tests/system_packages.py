"""Installs the system packages the tests need when they are missing: Debian's chromium and
chromium-driver, for the upload page tested in a real browser (tests/test_serve_browser.py).

    python -m tests.system_packages      # part of the README's test command and of .ci/run

A no-op when both are on PATH. Installing needs root (apt-get); otherwise it prints the command to run.
"""
import os
import shutil
import subprocess
import sys

PACKAGES = {'chromium': 'chromium', 'chromedriver': 'chromium-driver'}  # executable -> Debian package


def missing() -> list[str]:
  return [package for command, package in PACKAGES.items() if shutil.which(command) is None]


def main() -> int:
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
