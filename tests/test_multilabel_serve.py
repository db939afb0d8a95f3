"""--mode serve with a multi-label model: /predict answers `labels` (every class at or above its stored threshold)
and every class's sigmoid probability, equal to the in-process model's; /metadata, /healthz and the OpenAPI
description say so; bad requests get a 4xx and the server goes on; the upload page in headless Chromium shows
several labels, and 'no label above threshold'. One server (one restore and warm-up) for the module."""
import base64
import pathlib
import shutil
import urllib.parse

import httpx
import numpy as np
import pytest

from fpclass.analysis.calibration import Decision
from fpclass.config.inputs import DecodeSettings
from fpclass.data.decode import decode_image
from fpclass.infer.inference import load_trained
from fpclass.serve import app as serve_app
from fpclass.serve import server as serve_server
from fpclass.serve import service as serve_service
from fpclass.train import sidecar
from tests.conftest import MULTILABEL, load_config
from tests.test_serve import assert_still_serving, post_files
from tests.test_serve_browser import browser  # noqa: F401 - the module fixture (skips without chromium), shared

POOL = 16      # test images the thresholds are chosen over
MARGIN = 0.02  # the two chosen images' probabilities are at least this far from each threshold
CLEAR = 1e-3   # and every pool image's


def config():
  return load_config(MULTILABEL.split('=', 1)[1], **{
      'serve.warm_batch_sizes': (1, 2, 4, 8), 'serve.max_batch': 8, 'serve.max_images_per_request': 8})


def in_process(workdir, paths, calibrated: bool = True):
  """(probabilities (N, K), 0/1 predictions (N, K), class names) of the restored model outside the server:
  load_trained, its logits in one batch, and the stored decision."""
  cfg = config()
  trained = load_trained(cfg, workdir)
  images = np.stack([decode_image(p, DecodeSettings.from_config(cfg.data)) for p in paths])
  probs, pred = Decision.for_model(trained, calibrated)(trained.logits(images, len(images)))
  return probs, pred, trained.class_names


def choose_thresholds(probs: np.ndarray) -> tuple[int, int, np.ndarray]:
  """(several, none, thresholds): two pool images and per-class thresholds (not 0.5) under which the first
  has at least two labels and the second none, their probabilities at least MARGIN from the thresholds and
  every other pool image's at least CLEAR."""
  best = None
  for a in range(len(probs)):
    for b in range(len(probs)):
      wins = (probs[a] - probs[b] > 2 * MARGIN).sum()
      if a != b and (best is None or wins > best[0]):
        best = (wins, a, b)
  wins, a, b = best
  assert wins >= 2, f'no two pool images differ enough: {probs}'
  thresholds = np.where(probs[a] - probs[b] > 2 * MARGIN, (probs[a] + probs[b]) / 2,
                        np.maximum(probs[a], probs[b]) + MARGIN)
  for k in range(probs.shape[1]):  # keep the rest of the pool clear of each threshold, so 1e-5 cannot flip it
    while (np.abs(probs[:, k] - thresholds[k]) < CLEAR).any():
      thresholds[k] += CLEAR
  assert (probs[a] >= thresholds).sum() >= 2 and not (probs[b] >= thresholds).any(), (probs, thresholds)
  assert not np.isclose(thresholds, 0.5).any() and (thresholds < 1).all()
  return a, b, thresholds


@pytest.fixture(scope='module')
def served(trained_multilabel, tmp_path_factory):
  """A copy of the multi-label run whose sidecar holds per-label thresholds (as --mode calibrate stores them),
  chosen so one test image has several labels and one none; its pool of test images."""
  source, env, _ = trained_multilabel
  workdir = tmp_path_factory.mktemp('ml-serve') / 'run'
  shutil.copytree(source, workdir)
  (root,) = pathlib.Path(env['FPCLASS_CACHE']).glob('synthetic_multilabel/*/')
  paths = sorted((root / 'test').glob('*.png'))[:POOL]
  probs, _, names = in_process(workdir, paths, calibrated=False)
  several, none, thresholds = choose_thresholds(probs)
  metadata = sidecar.read_metadata(workdir)
  metadata['calibration'] = {'thresholds': dict(zip(names, thresholds.tolist()))}
  sidecar.write_metadata(workdir, metadata)
  return {'workdir': workdir, 'paths': paths, 'several': paths[several], 'none': paths[none],
          'thresholds': dict(zip(names, thresholds.tolist())), 'names': list(names)}


@pytest.fixture(scope='module')
def service(served):
  return serve_service.load_service(config(), served['workdir'])


@pytest.fixture(scope='module')
def server(service):
  with serve_server.BackgroundServer(serve_app.create_app(service)) as running:
    yield running


def expected_labels(result: dict, thresholds: dict) -> list:
  return [name for name, p in result['probabilities'].items() if p >= thresholds[name]]


def test_predict_answers_labels_above_the_stored_thresholds_and_the_models_probabilities(server, served):
  thresholds, names = served['thresholds'], served['names']
  paths = [served['several'], served['none']] + [p for p in served['paths'] if p not in
                                                 (served['several'], served['none'])][:4]
  probs, pred, _ = in_process(served['workdir'], paths)

  body = post_files(server.url, [(p.name, p.read_bytes()) for p in paths]).json()
  assert body['head'] == 'multilabel' and body['thresholds'] == thresholds and body['calibrated'] is True
  assert 'class' not in body and [r['file'] for r in body['predictions']] == [p.name for p in paths]
  for result, p, row in zip(body['predictions'], probs, pred):
    assert 'class' not in result and list(result['probabilities']) == names
    np.testing.assert_allclose(list(result['probabilities'].values()), p, atol=1e-5)
    assert result['labels'] == expected_labels(result, thresholds)
    assert result['labels'] == [names[k] for k in np.flatnonzero(row)]  # the in-process decision's labels
  assert len(body['predictions'][0]['labels']) >= 2 and body['predictions'][1]['labels'] == []

  one = httpx.post(server.url + 'predict', json={'image': base64.b64encode(paths[0].read_bytes()).decode()}).json()
  assert one['labels'] == body['predictions'][0]['labels'] and one['predictions'][0]['file'] == 'image'
  np.testing.assert_allclose(list(one['probabilities'].values()), probs[0], atol=1e-5)


def test_uncalibrated_labels_are_the_classes_at_or_above_one_half(service, served):
  plain = serve_service.Predictor(service.predictor.trained, Decision.for_model(service.predictor.trained, False),
                                  (1, 2, 4, 8))
  images = np.stack([decode_image(p, service.decode_settings) for p in served['paths'][:8]])
  assert plain.label_thresholds() == dict.fromkeys(served['names'], 0.5) and not plain.calibrated
  results = plain.classify(images)
  probs, _, _ = in_process(served['workdir'], served['paths'][:8], calibrated=False)
  for result, p in zip(results, probs):
    np.testing.assert_allclose(list(result['probabilities'].values()), p, atol=1e-5)
    assert result['labels'] == [name for name, q in zip(served['names'], p) if q >= 0.5]


def test_metadata_healthz_and_openapi_describe_the_multilabel_head(server, served):
  meta = httpx.get(server.url + 'metadata').json()
  assert meta['head'] == 'multilabel' and meta['class_names'] == served['names']
  assert meta['calibration']['thresholds'] == served['thresholds']
  assert meta['input']['channels'] == 3 and isinstance(meta['validation_scores']['mean_average_precision'], float)
  health = httpx.get(server.url + 'healthz').json()
  assert health['status'] == 'ok' and health['head'] == 'multilabel' and health['thresholds'] == served['thresholds']

  api = httpx.get(server.url + 'openapi.json').json()
  assert '"labels"' in api['info']['description'] and 'multi-label' in api['info']['description']
  schema = api['paths']['/predict']['post']['responses']['200']['content']['application/json']['schema']
  assert {'labels', 'probabilities', 'thresholds', 'predictions'} <= set(schema['properties'])

  png = httpx.post(server.url + 'explain', files={'file': ('a.png', served['several'].read_bytes(), 'image/png')})
  assert png.status_code == 200 and png.content.startswith(b'\x89PNG')
  probs = post_files(server.url, [('a.png', served['several'].read_bytes())]).json()['probabilities']
  assert urllib.parse.unquote(png.headers['x-explained-class']) == max(probs, key=probs.get)


@pytest.mark.parametrize('build, status', [
    (lambda p: {'files': {'file': ('notes.png', b'not an image', 'image/png')}}, 415),
    (lambda p: {'json': {'image': 'not base64!'}}, 422),
    (lambda p: {'json': {'images': [base64.b64encode(p.read_bytes()).decode()] * 9}}, 413),
    (lambda p: {'content': p.read_bytes(), 'headers': {'content-type': 'image/png'}}, 415),
])
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server, served, build, status):
  response = httpx.post(server.url + 'predict', **build(served['several']))
  assert response.status_code == status and response.json()['detail']
  assert_still_serving(server)
  again = post_files(server.url, [('a.png', served['several'].read_bytes())])
  assert again.status_code == 200 and len(again.json()['labels']) >= 2


def test_the_page_shows_each_label_and_no_label_above_threshold(browser, server, served, tmp_path):  # noqa: F811
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  wait = WebDriverWait(browser, 60)
  browser.get(server.url)
  wait.until(lambda d: 'multi-label' in d.find_element(By.ID, 'model-info').text)

  def upload(path):
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    browser.find_element(By.ID, 'file-input').send_keys(str(copy))
    wait.until(lambda d: d.find_element(By.ID, 'file-name').text == path.name
               and d.find_element(By.TAG_NAME, 'body').get_attribute('data-state') in ('done', 'error'))
    assert browser.find_element(By.TAG_NAME, 'body').get_attribute('data-state') == 'done', \
        browser.find_element(By.ID, 'status').text
    return post_files(server.url, [(path.name, path.read_bytes())]).json()

  api = upload(served['several'])
  shown = [chip.get_attribute('data-label') for chip in browser.find_elements(By.CSS_SELECTOR, '#predicted-labels .label')]
  assert shown == api['labels'] and len(shown) >= 2
  assert [chip.text for chip in browser.find_elements(By.CSS_SELECTOR, '#predicted-labels .label')] == shown
  assert browser.find_element(By.ID, 'predicted-labels-line').is_displayed()
  assert not browser.find_element(By.ID, 'predicted-class-line').is_displayed()
  rows = browser.find_elements(By.CSS_SELECTOR, '#probabilities tr.probability')
  assert [row.get_attribute('data-class') for row in rows] == served['names']
  np.testing.assert_allclose([float(row.get_attribute('data-probability')) for row in rows],
                             list(api['probabilities'].values()), atol=1e-6)
  assert [float(row.get_attribute('data-threshold')) for row in rows] == list(served['thresholds'].values())
  assert [row.get_attribute('data-class') for row in rows if 'top' in row.get_attribute('class').split()] == shown
  assert [row.find_element(By.CLASS_NAME, 'value').text for row in rows] == \
      [f'{100 * p:.1f}%' for p in api['probabilities'].values()]

  browser.find_element(By.ID, 'cam-toggle').click()
  wait.until(lambda d: d.find_element(By.ID, 'overlay').get_property('naturalWidth') == 32
             and 'Grad-CAM' in d.find_element(By.ID, 'file-name').text)
  top = max(api['probabilities'], key=api['probabilities'].get)
  assert browser.find_element(By.ID, 'file-name').text.endswith(f'Grad-CAM of class {top}')
  browser.find_element(By.ID, 'cam-toggle').click()

  api = upload(served['none'])
  assert api['labels'] == []
  assert browser.find_element(By.ID, 'predicted-labels').text == 'no label above threshold'
  assert not browser.find_elements(By.CSS_SELECTOR, '#predicted-labels .label')
  assert not browser.find_elements(By.CSS_SELECTOR, '#probabilities tr.top')
