"""The server's container image: the Containerfile agrees with the code (always, fast), and
container/build_rootfs.sh builds the image from Debian's packages and serves from it (slow, opt-in:
FPCLASS_CONTAINER_TEST=1, as root, with network to the Debian mirror and PyPI; about 7 minutes here)."""
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fpclass.data.decode import decode_image
from fpclass.serve.service import load_service
from tests.conftest import QUICK, REPO, load_config

SCRIPT = REPO / 'container' / 'build_rootfs.sh'
TOOLS = ('debootstrap', 'podman', 'runc', 'skopeo', 'curl')


def instructions(path=REPO / 'Containerfile') -> list[tuple[str, str]]:
  """(KEYWORD, arguments) of each instruction, with continuation lines joined and comments dropped."""
  joined, pending = [], ''
  for line in path.read_text().splitlines():
    if line.lstrip().startswith('#') or not line.strip():
      continue
    pending += line.rstrip()
    if pending.endswith('\\'):
      pending = pending[:-1] + ' '
      continue
    joined.append(pending)
    pending = ''
  return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def instruction(keyword: str) -> list[str]:
  return [args for key, args in instructions() if key == keyword]


def entrypoint() -> list[str]:
  (exec_form,) = instruction('ENTRYPOINT')
  return json.loads(exec_form)


def test_the_entrypoint_parses_with_launch_flags_into_a_remote_serve_config(trained_quick):
  """The image's command, with the model folder it copies, gives launch.py a valid serve config that binds
  every address on the exposed port (a renamed config key or flag fails here, not in a user's container)."""
  workdir, _, _ = trained_quick
  command = entrypoint()
  assert command[:2] == ['python', 'launch.py']
  model_dest = next(args.split()[-1] for args in instruction('COPY') if args.startswith('${MODEL}'))
  assert f'--workdir={model_dest}' in command and '--mode=serve' in command
  args = [a.replace(f'--workdir={model_dest}', f'--workdir={workdir}') for a in command[2:]]
  probe = ('import dataclasses, json, sys, launch\n'
           'launch.parse_flags(["launch.py", *sys.argv[1:]])\n'
           'from fpclass.config.outputs import ServeSettings\n'
           'settings = ServeSettings.from_config(launch.FLAGS.config.serve)\n'
           'print(json.dumps({"mode": launch.FLAGS.mode, **dataclasses.asdict(settings)}))\n')
  result = subprocess.run([sys.executable, '-c', probe, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  parsed = json.loads(result.stdout.strip().splitlines()[-1])
  assert parsed['mode'] == 'serve'
  assert parsed['host'] == '0.0.0.0' and parsed['allow_remote'] is True
  (exposed,) = instruction('EXPOSE')
  assert parsed['port'] == int(exposed)


def test_the_containerfile_copies_what_exists_and_installs_the_serve_extra():
  """Every file it copies is in the checkout and not dropped by .dockerignore; the extra it installs exists;
  the stop signal is one Python turns into launch.py's clean exit before uvicorn has its own handlers."""
  ignored = {line.strip() for line in (REPO / '.dockerignore').read_text().splitlines()
             if line.strip() and not line.startswith('#')}
  copied = [word for args in instruction('COPY') for word in shlex.split(args)[:-1] if '$' not in word]
  assert {'pyproject.toml', 'README.md', 'launch.py', 'fpclass', 'configs'} <= set(copied)
  for source in copied:
    assert (REPO / source).exists(), source
    assert source not in ignored, source
  assert 'build' in ignored  # build_rootfs.sh's default output (a root filesystem, an image store)
  (run,) = instruction('RUN')
  assert 'pip install' in run and '".[serve]"' in run
  pyproject = (REPO / 'pyproject.toml').read_text()
  assert '\nserve = [' in pyproject
  assert instruction('STOPSIGNAL') == ['SIGINT']
  # The base and the model are build arguments with defaults, so a plain `docker build .` has both.
  args = dict(a.split('=', 1) for a in instruction('ARG') if '=' in a)
  assert args['BASE'].startswith('python:3.') and args['MODEL']


def test_the_script_checks_its_arguments_before_doing_anything(tmp_path):
  """Bad arguments stop it at once with a one-line reason, before it needs root or touches anything."""
  assert subprocess.run(['bash', '-n', str(SCRIPT)]).returncode == 0
  usage = subprocess.run([str(SCRIPT), '--help'], capture_output=True, text=True)
  assert usage.returncode == 0 and '--workdir' in usage.stdout
  (tmp_path / 'metadata.json').write_text('{}')
  (tmp_path / 'print.png').write_bytes(b'')
  trained = ['--workdir', str(tmp_path), '--image', str(tmp_path / 'print.png')]
  for args, message in ((['--workdir', str(tmp_path / 'nothing')], 'must be a trained run'),
                        (['--bogus'], 'unknown argument --bogus'),
                        ([*trained, '--ref', 'no-such-ref'], '--ref no-such-ref: no such commit'),
                        ([*trained, '--out', '/var/tmp/fpclass'], 'outside /var/lib, /run and /var/tmp')):
    result = subprocess.run([str(SCRIPT), '--out', str(tmp_path / 'out'), *args], capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr, result.stderr
  assert not (tmp_path / 'out').exists() and not os.path.exists('/var/tmp/fpclass')


def read_steps(path: pathlib.Path) -> dict[str, tuple[str, str, str]]:
  lines = path.read_text().splitlines()[1:]
  return {row[0]: tuple(row[1:]) for row in (line.split('\t') for line in lines)}


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get('FPCLASS_CONTAINER_TEST') != '1',
                    reason='FPCLASS_CONTAINER_TEST=1 runs the container build (root, network, about 7 minutes)')
def test_the_script_builds_the_image_from_debian_and_serves_the_model(trained_quick, tmp_path):
  """The whole script, end to end: its record of which steps worked here, and the served answer equal to the
  model's own for the same image."""
  if os.geteuid() != 0:
    pytest.skip('container/build_rootfs.sh needs root')
  missing = [tool for tool in TOOLS if shutil.which(tool) is None]
  if missing:
    pytest.skip(f'missing {missing}: apt-get install debootstrap podman runc skopeo curl')
  workdir, env, _ = trained_quick
  (data,) = pathlib.Path(env['FPCLASS_CACHE']).glob('synthetic_footprints/*/')
  image = sorted((data / 'test').glob('*.png'))[0]
  out = tmp_path / 'container'
  host_state = [p for p in ('/var/lib/containers', '/run/containers', '/run/libpod', '/run/runc')
                if not os.path.exists(p)]

  result = subprocess.run([str(SCRIPT), '--workdir', str(workdir), '--image', str(image), '--out', str(out)],
                          capture_output=True, text=True, timeout=1800)
  steps = read_steps(out / 'steps.tsv')
  print('\n'.join(f'{name:20} {status:8} {seconds:>7} s  {message}' for name, (status, seconds, message) in
                  steps.items()))
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ('debootstrap', 'podman_import', 'context', 'oci_archive'):
    assert steps[name][0] == 'ok', (name, steps[name])
  assert 'ok' in (steps['podman_build'][0], steps.get('podman_build_chroot', ('',))[0])
  served = [name for name in ('container', 'chroot') if steps[f'{name}_serve'][0] == 'ok']
  assert served

  config = load_config(QUICK.split('=', 1)[1])
  service = load_service(config, workdir)
  decoded = decode_image(image, service.decode_settings)[None]
  expected, _ = service.predictor.decision(service.predictor.logits(decoded))
  names = service.predictor.trained.class_names
  for name in served:
    answer = json.loads((out / 'proof' / f'{name}-predict.json').read_text())
    assert answer['class'] == names[int(expected[0].argmax())]
    np.testing.assert_allclose([answer['probabilities'][c] for c in names], expected[0], atol=1e-5)

  # It leaves no mount and none of podman's state on the host, and its archive is a complete OCI image.
  assert str(out) not in pathlib.Path('/proc/self/mountinfo').read_text()
  assert not [p for p in host_state if os.path.exists(p)]
  oci = json.loads((out / 'proof' / 'oci-config.json').read_text())['config']
  assert oci['Entrypoint'] == entrypoint() and oci['User'] == 'fpclass' and oci['StopSignal'] == 'SIGINT'
  assert (out / 'fpclass-serve.oci.tar').stat().st_size > 100 * 2**20
  shutil.rmtree(out)  # about 2.6 GB (image store, base, archive); kept when the test fails, to read its logs
