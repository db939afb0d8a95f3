"""The upload page in headless Chromium: upload a footprint, read the page's answer, compare with the API.

Needs Debian's chromium and chromium-driver (`python -m tests.system_packages` installs them). Without them
the test is skipped on a developer machine, and fails under CI (CI=true), where .ci/run installs them.
`FPCLASS_UPDATE_SCREENSHOT=1` also writes the screenshot to docs/serve_page.png (linked from the README); a
plain test run leaves the tracked file alone.
"""
import os
import pathlib
import shutil

import httpx
import numpy as np
import pytest

from fpclass import fileio
from tests.conftest import REPO
from tests.test_serve import checkerboard_png, images, server, service  # noqa: F401 - the module fixtures, shared

CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
CHROMEDRIVER = shutil.which('chromedriver') or '/usr/bin/chromedriver'
SCREENSHOT = REPO / 'docs' / 'serve_page.png'


@pytest.fixture(scope='module')
def browser():
  missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not pathlib.Path(p).exists()]
  if missing:
    message = f'{" and ".join(missing)} not installed (python -m tests.system_packages installs them)'
    if os.environ.get('CI', '').lower() == 'true':
      pytest.fail(f'CI must run the browser test: {message}')
    pytest.skip(message)
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for argument in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                   '--window-size=1100,760', '--force-device-scale-factor=1'):
    options.add_argument(argument)
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
  try:
    yield driver
  finally:
    driver.quit()


def test_upload_shows_the_class_and_probabilities_of_the_api(browser, server, images, tmp_path):  # noqa: F811
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  path, data = images[0]
  upload = tmp_path / path.name
  shutil.copy(path, upload)
  wait = WebDriverWait(browser, 60)
  browser.get(server.url)
  wait.until(lambda d: 'footprint_cnn' in d.find_element(By.ID, 'model-info').text)
  browser.find_element(By.ID, 'file-input').send_keys(str(upload))
  wait.until(lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-state') in ('done', 'error'))
  assert browser.find_element(By.TAG_NAME, 'body').get_attribute('data-state') == 'done', \
      browser.find_element(By.ID, 'status').text

  shown_class = browser.find_element(By.ID, 'predicted-class').text
  unknown_line = browser.find_element(By.ID, 'unknown-line')
  rows = browser.find_elements(By.CSS_SELECTOR, '#probabilities tr.probability')
  shown = {row.get_attribute('data-class'): float(row.get_attribute('data-probability')) for row in rows}
  percentages = {row.get_attribute('data-class'): row.find_element(By.CLASS_NAME, 'value').text for row in rows}

  api = httpx.post(server.url + 'predict', files={'file': (path.name, data, 'image/png')}).json()
  assert shown_class == api['class']
  assert unknown_line.is_displayed() == api['unknown']   # the page shows the API's flag, whichever it is
  assert list(shown) == list(api['probabilities'])
  np.testing.assert_allclose(list(shown.values()), list(api['probabilities'].values()), atol=1e-6)
  assert percentages == {c: f'{100 * p:.1f}%' for c, p in api['probabilities'].items()}
  assert browser.find_element(By.ID, 'preview').get_property('naturalWidth') > 0

  browser.find_element(By.ID, 'cam-toggle').click()
  wait.until(lambda d: d.find_element(By.ID, 'overlay').is_displayed()
             and d.find_element(By.ID, 'overlay').get_property('naturalWidth') > 0)
  assert browser.find_element(By.ID, 'overlay').get_property('naturalWidth') == 80  # the model's input width

  assert browser.find_element(By.ID, 'file-name').text.endswith(f'Grad-CAM of class {api["class"]}')

  browser.save_screenshot(str(tmp_path / 'serve_page.png'))
  assert (tmp_path / 'serve_page.png').stat().st_size > 10_000
  if os.environ.get('FPCLASS_UPDATE_SCREENSHOT') == '1':
    with fileio.atomic_path(SCREENSHOT) as tmp:
      shutil.copy(tmp_path / 'serve_page.png', tmp)

  # An image like none of the classes: the page says so above the closest class.
  (tmp_path / 'checker.png').write_bytes(checkerboard_png())
  browser.find_element(By.ID, 'file-input').send_keys(str(tmp_path / 'checker.png'))
  wait.until(lambda d: d.find_element(By.ID, 'file-name').text.startswith('checker.png')
             and d.find_element(By.TAG_NAME, 'body').get_attribute('data-state') == 'done')
  assert browser.find_element(By.ID, 'unknown-line').is_displayed()
  assert browser.find_element(By.ID, 'unknown-line').text == 'this does not look like any of: 0, 1'
  assert browser.find_element(By.ID, 'predicted-class-label').text == 'Closest class'
  checker = httpx.post(server.url + 'predict', files={'file': ('checker.png', checkerboard_png(), 'image/png')}).json()
  assert checker['unknown'] is True and browser.find_element(By.ID, 'predicted-class').text == checker['class']

  # A file that is no image: the page shows the server's reason and keeps the last result.
  (tmp_path / 'notes.png').write_bytes(b'not an image')
  browser.find_element(By.ID, 'file-input').send_keys(str(tmp_path / 'notes.png'))
  wait.until(lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-state') == 'error')
  assert browser.find_element(By.ID, 'status').text == '415: notes.png: not an image Pillow can identify'
  assert browser.find_element(By.ID, 'predicted-class').text == checker['class']
