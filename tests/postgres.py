"""A real PostgreSQL server on loopback for the tests that share an Optuna study (tests/test_auto.py): initdb in a
temporary folder, pg_ctl start on a free port, one database, and a stop that leaves nothing behind.

PostgreSQL refuses to run as root, so under root (CI) the server runs as Debian's `postgres` user, whose
package creates it; `python -m tests.system_packages` installs the package when initdb is missing.
"""
import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile

from tests.system_packages import postgres_bin


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(database: str = 'fpclass'):
  """Yields the URL of a fresh database on a PostgreSQL server started for the test."""
  binaries = postgres_bin()
  if binaries is None:
    raise RuntimeError('PostgreSQL is not installed: run python -m tests.system_packages')
  root = pathlib.Path(tempfile.mkdtemp(prefix='fpclass-pg-'))
  as_user = ['runuser', '-u', 'postgres', '--'] if os.geteuid() == 0 else []
  if as_user:
    shutil.chown(root, 'postgres', 'postgres')
  data, log, port = root / 'data', root / 'server.log', _free_port()

  def run(*args):
    return subprocess.run([*as_user, *args], check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL)

  try:
    run(str(binaries / 'initdb'), '-D', str(data), '-A', 'trust', '-U', 'postgres', '--no-sync')
    run(str(binaries / 'pg_ctl'), '-D', str(data), '-l', str(log), '-w', '-o',
        f'-p {port} -h 127.0.0.1 -k {root} -c fsync=off -c max_connections=50', 'start')
    try:
      subprocess.run(['psql', '-h', '127.0.0.1', '-p', str(port), '-U', 'postgres', '-c',
                      f'CREATE DATABASE {database}'], check=True, capture_output=True, stdin=subprocess.DEVNULL)
      yield f'postgresql://postgres@127.0.0.1:{port}/{database}'
    finally:
      run(str(binaries / 'pg_ctl'), '-D', str(data), '-m', 'immediate', '-w', 'stop')
  finally:
    shutil.rmtree(root, ignore_errors=True)
