"""--mode serve: every endpoint and every kind of bad request, through a real uvicorn server on loopback."""
import base64
import concurrent.futures
import dataclasses
import io
import json
import os
import pathlib
import re
import signal
import struct
import subprocess
import sys
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from fpclass.config import ConfigError, ServeSettings
from fpclass.data.decode import decode_image
from fpclass.modes import serve
from tests.conftest import QUICK, REPO, load_config

LIMIT_BYTES = 300_000   # serve.max_upload_bytes in these tests, so oversized bodies stay small
MAX_IMAGES = 4


@pytest.fixture(scope='module')
def service(trained_quick):
  """The quick run's model, restored and warmed once for every server of this module."""
  workdir, _, _ = trained_quick
  config = load_config(QUICK.split('=', 1)[1], **{
      'serve.max_upload_bytes': LIMIT_BYTES, 'serve.max_images_per_request': MAX_IMAGES,
      'serve.warm_batch_sizes': (1, 2, 4, 8, 16), 'serve.max_batch': 16})
  return serve.load_service(config, workdir)


@pytest.fixture(scope='module')
def server(service):
  with serve.BackgroundServer(serve.create_app(service)) as running:
    yield running


@pytest.fixture(scope='module')
def images(trained_quick):
  """Three footprint PNGs the model never trained on (the synthetic test split), as files and bytes."""
  _, env, _ = trained_quick
  (root,) = pathlib.Path(env['FPCLASS_CACHE']).glob('synthetic_footprints/*/')
  paths = sorted((root / 'test').glob('*.png'))[:3]
  return [(p, p.read_bytes()) for p in paths]


def expected_probabilities(service, paths) -> np.ndarray:
  """What the restored model gives, outside the server: the same decoding and the same jitted function."""
  settings = service.decode_settings
  decoded = np.stack([decode_image(p, settings) for p in paths])
  probs, _ = service.predictor.decision(service.predictor.logits(decoded))
  return probs


def post_files(url, files, **kwargs):
  return httpx.post(url + 'predict', files=[('file', (name, data, 'image/png')) for name, data in files], **kwargs)


def assert_still_serving(server):
  response = httpx.get(server.url + 'healthz')
  assert response.status_code == 200 and response.json()['status'] == 'ok'


def test_healthz_metadata_and_the_page(server, service, trained_quick):
  workdir, _, _ = trained_quick
  assert server.url.startswith('http://127.0.0.1:') and not server.url.endswith(':0/')
  health = httpx.get(server.url + 'healthz').json()
  assert health['status'] == 'ok' and health['model'] == 'footprint_cnn' and health['micro_batching']
  meta = httpx.get(server.url + 'metadata').json()
  assert meta['class_names'] == ['0', '1'] and meta['model'] == 'footprint_cnn'
  assert meta['input'] == {'height': 120, 'width': 80, 'channels': 1, 'resize': 'stretch', 'dtype': 'uint8'}
  assert meta['epoch'] == service.predictor.trained.epoch
  scores = json.loads((workdir / 'scores.json').read_text())
  assert meta['validation_scores']['accuracy'] == scores['accuracy']
  assert meta['validation_scores']['macro_f1'] == scores['macro_f1']

  page = httpx.get(server.url)
  assert page.status_code == 200 and page.headers['content-type'].startswith('text/html')
  # Everything the page loads comes from this server: it works offline, with no CDN.
  references = re.findall(r'(?:src|href)="([^"]+)"', page.text)
  assert references and all(ref.startswith('/static/') for ref in references)
  for ref in references:
    assert httpx.get(server.url + ref.lstrip('/')).status_code == 200
  script = httpx.get(server.url + 'static/app.js').text
  assert 'http://' not in script and 'https://' not in script


def test_predict_multipart_and_base64_json(server, service, images):
  paths = [p for p, _ in images]
  expected = expected_probabilities(service, paths)

  one = post_files(server.url, [(images[0][0].name, images[0][1])])
  assert one.status_code == 200
  body = one.json()
  assert body['model'] == 'footprint_cnn' and body['epoch'] == service.predictor.trained.epoch
  assert body['checkpoint'] == service.predictor.trained.checkpoint
  assert body['class'] == ['0', '1'][int(expected[0].argmax())]
  np.testing.assert_allclose([body['probabilities']['0'], body['probabilities']['1']], expected[0], atol=1e-6)

  many = post_files(server.url, [(p.name, data) for p, data in images]).json()
  assert [r['file'] for r in many['predictions']] == [p.name for p in paths]
  assert 'class' not in many  # several images: only the list
  got = np.array([[r['probabilities']['0'], r['probabilities']['1']] for r in many['predictions']])
  np.testing.assert_allclose(got, expected, atol=1e-6)

  encoded = base64.b64encode(images[1][1]).decode()
  single = httpx.post(server.url + 'predict', json={'image': encoded}).json()  # seed 004's request
  np.testing.assert_allclose([single['probabilities']['0'], single['probabilities']['1']], expected[1], atol=1e-6)
  data_url = httpx.post(server.url + 'predict', json={'image': 'data:image/png;base64,' + encoded}).json()
  assert data_url['class'] == single['class']
  listed = httpx.post(server.url + 'predict', json={'images': [encoded, base64.b64encode(images[2][1]).decode()]})
  assert [r['file'] for r in listed.json()['predictions']] == ['images[0]', 'images[1]']


def test_concurrent_requests_share_device_calls(service, images):
  wide = dataclasses.replace(service, settings=dataclasses.replace(service.settings, batch_window_ms=250.0))
  with serve.BackgroundServer(serve.create_app(wide)) as running:
    before = httpx.get(running.url + 'healthz').json()['device_calls']
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
      replies = list(pool.map(lambda i: post_files(running.url, [(f'{i}.png', images[i % 3][1])], timeout=60),
                              range(12)))
    calls = httpx.get(running.url + 'healthz').json()['device_calls'] - before
  assert all(r.status_code == 200 for r in replies)
  expected = expected_probabilities(service, [p for p, _ in images])
  for i, reply in enumerate(replies):  # each request gets its own image's answer back
    got = reply.json()['probabilities']
    np.testing.assert_allclose([got['0'], got['1']], expected[i % 3], atol=1e-6)
  assert 1 <= calls < 12, f'{calls} device calls for 12 concurrent requests: nothing was batched'


def test_without_micro_batching_each_request_calls_the_device(service, images):
  plain = dataclasses.replace(service, settings=dataclasses.replace(service.settings, micro_batching=False))
  with serve.BackgroundServer(serve.create_app(plain)) as running:
    health = httpx.get(running.url + 'healthz').json()
    assert health['micro_batching'] is False and health['device_calls'] is None
    body = post_files(running.url, [('a.png', images[0][1])]).json()
  np.testing.assert_allclose([body['probabilities']['0'], body['probabilities']['1']],
                             expected_probabilities(service, [images[0][0]])[0], atol=1e-6)


def test_explain_returns_the_overlay_png(server, images):
  response = httpx.post(server.url + 'explain', files={'file': ('a.png', images[0][1], 'image/png')})
  assert response.status_code == 200 and response.headers['content-type'] == 'image/png'
  with Image.open(io.BytesIO(response.content)) as overlay:
    assert overlay.format == 'PNG' and overlay.mode == 'RGB' and overlay.size == (80, 120)
    pixels = np.asarray(overlay)
  assert pixels.std() > 0  # a heat map over the image, not a blank
  by_json = httpx.post(server.url + 'explain', json={'image': base64.b64encode(images[0][1]).decode()})
  assert by_json.content == response.content


def png_with_size(width: int, height: int) -> bytes:
  """A tiny, valid-looking PNG whose header claims width x height: a decompression bomb's signature."""
  def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF)
  header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\x00' * 64)) + chunk(b'IEND', b'')


def truncated_png(data: bytes) -> bytes:
  return data[:len(data) // 2]


def multipart(fields) -> tuple[bytes, str]:
  boundary = 'fpclass-test-boundary'
  parts = []
  for name, filename, data in fields:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else '')
    parts.append(f'--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n'.encode() + data + b'\r\n')
  return b''.join(parts) + f'--{boundary}--\r\n'.encode(), f'multipart/form-data; boundary={boundary}'


def chunks(data: bytes, size: int = 16_384):
  for start in range(0, len(data), size):
    yield data[start:start + size]


# (name, request builder (png bytes -> httpx.request kwargs), expected status, message fragment)
BAD_REQUESTS = [
    ('upload over max_upload_bytes (Content-Length)',
     lambda png: dict(files={'file': ('big.png', b'\0' * (LIMIT_BYTES + 1), 'image/png')}), 413,
     f'is over the limit of {LIMIT_BYTES} bytes (config.serve.max_upload_bytes)'),
    ('upload over max_upload_bytes (chunked, no Content-Length)',
     lambda png: dict(content=chunks(multipart([('file', 'big.png', b'\0' * (2 * LIMIT_BYTES))])[0]),
                      headers={'content-type': multipart([])[1]}), 413,
     f'upload is over the limit of {LIMIT_BYTES} bytes'),
    ('more files than max_images_per_request',
     lambda png: dict(files=[('file', (f'{i}.png', png, 'image/png')) for i in range(MAX_IMAGES + 1)]), 413,
     f'images in one request: at most {MAX_IMAGES} (config.serve.max_images_per_request)'),
    ('more base64 images than max_images_per_request',
     lambda png: dict(json={'images': [base64.b64encode(png).decode()] * (MAX_IMAGES + 1)}), 413,
     f'{MAX_IMAGES + 1} images in one request: at most {MAX_IMAGES}'),
    ('a text file', lambda png: dict(files={'file': ('notes.png', b'hello, not an image', 'image/png')}), 415,
     'notes.png: not an image Pillow can identify'),
    ('a truncated PNG', lambda png: dict(files={'file': ('cut.png', truncated_png(png), 'image/png')}), 422,
     'cut.png: corrupt image'),
    ('a decompression bomb (a 300-byte PNG whose header claims 10000 x 10000)',
     lambda png: dict(files={'file': ('bomb.png', png_with_size(10_000, 10_000), 'image/png')}), 422,
     'bomb.png: decompression bomb: 10000x10000 = 100000000 pixels'),
    ('an empty file', lambda png: dict(files={'file': ('empty.png', b'', 'image/png')}), 422,
     'empty.png: zero-byte file'),
    ('a urlencoded form', lambda png: dict(data={'note': 'no file here'}), 415,
     "content type 'application/x-www-form-urlencoded'"),
    ('multipart with only a text field',
     lambda png: dict(content=multipart([('note', None, b'no file')])[0],
                      headers={'content-type': multipart([])[1]}), 422, 'no file in the multipart body'),
    ('multipart without a boundary',
     lambda png: dict(content=b'--x\r\n\r\n', headers={'content-type': 'multipart/form-data'}), 422,
     'malformed multipart body'),
    ('JSON without "image"', lambda png: dict(json={'picture': 'abc'}), 422, 'needs an "image" field'),
    ('JSON "image" not base64', lambda png: dict(json={'image': 'not base64!'}), 422,
     '"image" is not valid base64'),
    ('JSON "image" not a string', lambda png: dict(json={'image': 42}), 422, '"image" must be a base64 string'),
    ('JSON "images" empty', lambda png: dict(json={'images': []}), 422, '"images" must be a non-empty list'),
    ('JSON base64 of a non-image',
     lambda png: dict(json={'image': base64.b64encode(b'plain text').decode()}), 415,
     'image: not an image Pillow can identify'),
    ('a body that is not JSON', lambda png: dict(content=b'{"image": ', headers={'content-type': 'application/json'}),
     422, 'the body is not valid JSON'),
    ('content type text/plain', lambda png: dict(content=b'abc', headers={'content-type': 'text/plain'}), 415,
     "content type 'text/plain'"),
    ('no content type', lambda png: dict(content=b''), 415, "content type '(none)'"),
]


@pytest.mark.filterwarnings('ignore::PIL.Image.DecompressionBombWarning')  # Pillow's, before ours refuses it
@pytest.mark.parametrize('name, build, status, message', BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_with_a_reason_and_the_server_keeps_serving(server, images, name, build, status,
                                                                            message):
  response = httpx.post(server.url + 'predict', timeout=60, **build(images[0][1]))
  assert response.status_code == status, response.text
  detail = response.json()['detail']
  assert message in detail and '\n' not in detail
  assert_still_serving(server)


def test_other_4xx_and_explain_takes_one_image(server, images):
  assert httpx.get(server.url + 'predict').status_code == 405
  assert httpx.get(server.url + 'nowhere').status_code == 404
  two = httpx.post(server.url + 'explain', files=[('file', (f'{i}.png', images[0][1], 'image/png')) for i in range(2)])
  assert two.status_code == 413 and two.json()['detail'] == 'this endpoint takes one image per request'
  bad = httpx.post(server.url + 'explain', files={'file': ('x.png', b'nope', 'image/png')})
  assert bad.status_code == 415
  assert_still_serving(server)


def test_a_remote_host_needs_allow_remote():
  with pytest.raises(ConfigError, match='config.serve.host=.0.0.0.0.: must be a loopback address'):
    ServeSettings(host='0.0.0.0')
  assert ServeSettings(host='0.0.0.0', allow_remote=True).host == '0.0.0.0'


def test_the_command_prints_the_bound_url_of_port_0(trained_quick):
  workdir, env, _ = trained_quick
  command = [sys.executable, str(REPO / 'launch.py'), f'--workdir={workdir}', '--mode=serve',
             '--config.serve.port=0', '--config.serve.warm_batch_sizes=(1,)', '--config.serve.max_batch=1']
  process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  try:
    line = process.stdout.readline()
    found = re.search(r'at (http://127\.0\.0\.1:(\d+)/)', line)
    assert found and int(found.group(2)) > 0, line
    assert httpx.get(found.group(1) + 'healthz', timeout=30).json()['status'] == 'ok'
    # Ctrl-C: uvicorn's graceful shutdown, then one line and the shell's status for SIGINT, no traceback.
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and 'Traceback' not in stderr, stderr
    assert stderr.splitlines()[-1].startswith('fpclass: interrupted (SIGINT); --mode serve stopped'), stderr
  finally:
    if process.poll() is None:
      process.kill()
      process.wait(timeout=30)
