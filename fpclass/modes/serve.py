"""`--mode serve`: the selected checkpoint behind an upload page and a JSON API (FastAPI under uvicorn).

    python launch.py --workdir runs/fp-exp4 --mode serve            # http://127.0.0.1:8000/

- `GET /`: the upload page (pick or drop an image; its class, a bar per class probability, and a Grad-CAM
  toggle). Its files ship in the package (`serve_static/`) and load nothing from elsewhere.
- `POST /predict`: one or more images as multipart file fields, or JSON `{"image": "<base64>"}` (or
  `{"images": [...]}`) as seed 004's app took them. Returns the class and per-class probabilities of each
  image, with the model name and checkpoint epoch.
- `POST /explain`: the Grad-CAM overlay (PNG) of one image, for its predicted class.
- `GET /metadata`: class names, input size, model, checkpoint, calibration and validation scores, the
  queue's limits; `GET /healthz`: the health check. Both say which worker answered and how many are up.

`serve.workers` processes answer on the one port (fpclass.modes.serve_supervisor starts them, replaces
one that dies, and stops them on Ctrl-C); each restores the checkpoint once. Its predict function (the
training program's, `Trained.predict_fn`) is compiled and run once for each of `serve.warm_batch_sizes`
before the worker takes requests, and every device call is padded up to one of those sizes, so no request
waits for a compilation. With `serve.micro_batching`, requests to one worker that arrive within
`serve.batch_window_ms` of each other share one device call of up to `serve.max_batch` images (one asyncio
queue, one batching task); without it each request makes its own call. Device calls run one at a time on
their own thread, so the event loop keeps reading requests meanwhile.

Overload is refused, not queued: a worker holding `serve.max_queue` requests answers the next one 503 with
Retry-After at once (its body unread), and a request still waiting for its device call after
`serve.max_wait_ms` gets the same answer, so every accepted request is answered within max_wait_ms plus
one device call (`/metadata` gives the device call's time per batch size, measured at start-up).

A bad request gets a 4xx and a one-line reason in `{"detail": ...}`, never a 500: a body over
`serve.max_upload_bytes` gets 413 (checked against Content-Length before reading, and while reading), a
file that is no image 415, a corrupt image or decompression bomb 422, a missing field or bad base64 422.

The server binds loopback by default; another address needs `serve.allow_remote=True`, because anyone who
can reach the port can then use the model (there is no authentication).

There is no endpoint that trains. Seed 004's `/train` route ran the whole training pipeline on any
request: anyone who could reach the page could occupy the machine for minutes, and replace the model
being served while it answered others. Training here is `launch.py --mode train`, a deliberate command
with its own workdir, and serving only reads that workdir.
"""
import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import dataclasses
import io
import json
import math
import os
import pathlib
import socket
import threading
import time
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image

from fpclass.config import DecodeSettings, ExplainSettings, ServeSettings
from fpclass.data.decode import DecodeError, decode_bytes
from fpclass.errors import UserInputError
from fpclass.inference import Trained, load_trained
from fpclass.modes import explain, serve_supervisor
from fpclass.modes.predict import Decision, overlay_rgb

try:
  import fastapi
  import python_multipart  # noqa: F401 - starlette parses multipart bodies with it
  import uvicorn
  from fastapi import responses
  from fastapi.staticfiles import StaticFiles
  from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # an optional extra: say how to get it rather than fail with a bare import error
  raise UserInputError(f'--mode serve needs FastAPI, uvicorn and python-multipart ({e}); install them with '
                       "pip install 'fpclass[serve]'") from None

STATIC = pathlib.Path(__file__).resolve().parent / 'serve_static'
UNIDENTIFIED = 'not an image Pillow can identify'
MODEL_PATHS = ('/predict', '/explain')  # the requests that count against serve.max_queue
# A refused client may try again after a second (the least Retry-After can say): by then a worker has
# answered many requests, or its clients have gone.
RETRY_AFTER_SECONDS = 1


class ApiError(Exception):
  """A bad request: its HTTP status and one-line reason."""

  def __init__(self, status: int, detail: str):
    super().__init__(detail)
    self.status, self.detail = status, detail


class Overloaded(Exception):
  """A request this worker will not answer in time: 503 with Retry-After."""


@dataclasses.dataclass
class Predictor:
  """The served model: the training program's predict function, compiled for each warm batch size at start-up."""
  trained: Trained
  decision: Decision
  warm_sizes: tuple
  explainer: object = None
  device_call_ms: dict = dataclasses.field(default_factory=dict)  # per warm size: one call's time at start-up

  def __post_init__(self):
    self.warm_sizes = tuple(sorted(set(int(b) for b in self.warm_sizes)))
    self._predict = self.trained.predict_fn

  def warm(self, image_shape) -> float:
    """Compiles (or loads) and runs every warm size, then times one more call of each, and Grad-CAM for
    one image; returns the seconds it took."""
    start = time.perf_counter()
    for size in self.warm_sizes:
      zeros = np.zeros((size, *image_shape), np.uint8)
      self.logits(zeros)
      timed = time.perf_counter()
      self.logits(zeros)
      self.device_call_ms[size] = round(1e3 * (time.perf_counter() - timed), 2)
    if self.explainer is not None:
      self.explainer.maps(np.zeros((1, *image_shape), np.uint8), np.zeros(1, np.int32))
    return time.perf_counter() - start

  def logits(self, images: np.ndarray) -> np.ndarray:
    """Logits of any number of images: chunks of the largest warm size, each padded up to a warm size."""
    out = []
    largest = self.warm_sizes[-1]
    state = self.trained.state
    for start in range(0, len(images), largest):
      chunk = images[start:start + largest]
      n = len(chunk)
      size = next(b for b in self.warm_sizes if b >= n)
      if size != n:
        chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), np.uint8)])
      out.append(np.asarray(self._predict(state.params, state.batch_stats, chunk))[:n])
    return np.concatenate(out)

  def classify(self, images: np.ndarray) -> list[dict]:
    """One result per image: its class name and every class's probability."""
    probs, pred = self.decision(self.logits(images))
    names = self.trained.class_names
    return [{'class': names[int(k)], 'probabilities': dict(zip(names, p.tolist()))} for p, k in zip(probs, pred)]

  def overlay_png(self, image: np.ndarray) -> bytes:
    """The Grad-CAM overlay of one image for its predicted class, as PNG bytes."""
    _, pred = self.decision(self.logits(image[None]))
    maps, _ = self.explainer.maps(image[None], pred.astype(np.int32))
    buffer = io.BytesIO()
    Image.fromarray(overlay_rgb(image, maps[0], self.explainer.settings.alpha), 'RGB').save(buffer, format='PNG')
    return buffer.getvalue()


class Waiting(NamedTuple):
  """A request in the batcher's queue: its images, the future its handler awaits, and when it arrived (at
  the handler, before its body was read) and was queued (time.monotonic())."""
  images: np.ndarray
  future: asyncio.Future
  arrived: float
  queued: float


class MicroBatcher:
  """Gathers concurrent requests into shared device calls.

  A batch closes when it holds `max_batch` images, when `window_s` has passed since its first request
  was queued (requests that queued while the device was busy do not wait again), or as soon as no other
  request is being read: a lone request is not held back for company that is not coming. A request is
  never split across batches; one that would overflow a batch starts the next. A request that has waited
  `max_wait_s` since it arrived gets Overloaded instead of a place in a batch, and one whose client has
  gone is dropped, so the device works only for answers someone will read.
  """

  def __init__(self, run_batch, window_s: float, max_batch: int, executor, max_wait_s: float = math.inf):
    self.run_batch, self.window_s, self.max_batch, self.executor = run_batch, window_s, max_batch, executor
    self.max_wait_s = max_wait_s
    self.queue: asyncio.Queue = asyncio.Queue()
    self.reading = 0  # requests between arrival and `submit` (their bodies are being read and decoded)
    self.calls = 0    # device calls made, for /healthz and the load test
    self.expired = 0  # requests answered Overloaded after max_wait_s

  @contextlib.contextmanager
  def arriving(self):
    """Counts a request as coming while its body is read, so an open batch waits for it."""
    self.reading += 1
    try:
      yield
    finally:
      self.reading -= 1

  async def submit(self, images: np.ndarray, arrived: float | None = None) -> list:
    future = asyncio.get_running_loop().create_future()
    now = time.monotonic()
    self.queue.put_nowait(Waiting(images, future, now if arrived is None else arrived, now))
    return await future

  def _still_wanted(self, item: Waiting) -> bool:
    """False for a request whose client has gone, or that waited too long (it is answered Overloaded)."""
    if item.future.done():
      return False
    if time.monotonic() - item.arrived > self.max_wait_s:
      self.expired += 1
      item.future.set_exception(Overloaded(f'waited over {self.max_wait_s * 1e3:.0f} ms for the device '
                                           '(config.serve.max_wait_ms)'))
      return False
    return True

  async def run(self) -> None:
    """The single batching task: forms a batch, runs it on the device thread, hands out the results."""
    loop = asyncio.get_running_loop()
    carried = None
    while True:
      first = carried or await self.queue.get()
      carried = None
      if not self._still_wanted(first):
        continue
      batch, count = [first], len(first.images)
      closes = first.queued + self.window_s
      while count < self.max_batch:
        try:
          item = self.queue.get_nowait()
        except asyncio.QueueEmpty:
          remaining = closes - time.monotonic()
          if remaining <= 0 or not self.reading:
            break
          try:
            item = await asyncio.wait_for(self.queue.get(), remaining)
          except asyncio.TimeoutError:
            break
        if not self._still_wanted(item):
          continue
        if count + len(item.images) > self.max_batch:
          carried = item  # it starts the next batch
          break
        batch.append(item)
        count += len(item.images)
      images = np.concatenate([item.images for item in batch])
      try:
        results = await loop.run_in_executor(self.executor, self.run_batch, images)
        error = None
      except Exception as e:  # noqa: BLE001 - handed to each waiting request, never lost in the worker
        results, error = None, e
      self.calls += 1
      offset = 0
      for item in batch:
        if not item.future.done():  # a request whose client went away has been cancelled
          if error is None:
            item.future.set_result(results[offset:offset + len(item.images)])
          else:
            item.future.set_exception(error)
        offset += len(item.images)


@dataclasses.dataclass
class WorkerStatus:
  """This process's place among the server's workers: its number, and how many are up (the supervisor
  tells each worker on its stdin; a server run in one process is worker 0 of 1)."""
  index: int = 0
  configured: int = 1
  up: int = 1
  pid: int = dataclasses.field(default_factory=os.getpid)

  def update(self, message: dict) -> None:
    self.up = int(message.get('workers_up', self.up))
    self.configured = int(message.get('workers', self.configured))

  def describe(self) -> dict:
    return {'up': self.up, 'configured': self.configured}


@dataclasses.dataclass
class Service:
  """What the app serves: the predictor, the settings, and what /metadata reports."""
  predictor: Predictor
  settings: ServeSettings
  decode_settings: DecodeSettings
  metadata: dict
  warm_seconds: float = 0.0


def check_batch_sizes(settings: ServeSettings) -> None:
  if settings.max_batch > max(settings.warm_batch_sizes):
    raise UserInputError(f'config.serve.max_batch={settings.max_batch} is over the largest of '
                         f'config.serve.warm_batch_sizes={settings.warm_batch_sizes}: a batch that size would '
                         'compile on a request; add it to warm_batch_sizes')


def load_service(config, workdir, settings: ServeSettings | None = None) -> Service:
  """Restores the checkpoint of `workdir` once and warms its predict (and Grad-CAM) function."""
  workdir = pathlib.Path(workdir)
  settings = settings or ServeSettings.from_config(config.serve)
  check_batch_sizes(settings)
  trained = load_trained(config, workdir)
  decode_settings = DecodeSettings.from_config(config.data)
  image_shape = (decode_settings.height, decode_settings.width, decode_settings.channels)
  explain_settings = dataclasses.replace(ExplainSettings.from_config(config.explain), guided=False, batch_size=1)
  explainer = explain.build_explainer(config, trained, explain_settings, image_shape)
  predictor = Predictor(trained, Decision.for_model(trained, settings.calibrated), settings.warm_batch_sizes,
                        explainer)
  warm_seconds = predictor.warm(image_shape)
  return Service(predictor, settings, decode_settings, describe(config, workdir, trained, decode_settings, predictor),
                 warm_seconds)


def describe(config, workdir, trained: Trained, decode_settings: DecodeSettings, predictor: Predictor) -> dict:
  """GET /metadata: the model and what it expects, and its validation scores (scores.json) if evaluated."""
  scores = None
  scores_path = pathlib.Path(workdir) / 'scores.json'
  if scores_path.is_file():
    try:
      scores = {k: v for k, v in json.loads(scores_path.read_text()).items()
                if isinstance(v, (int, float, str)) or v is None}
    except (OSError, ValueError):
      scores = None
  return {
      'name': str(config.name), 'model': str(config.model.name), 'class_names': list(trained.class_names),
      'input': {'height': decode_settings.height, 'width': decode_settings.width,
                'channels': decode_settings.channels, 'resize': decode_settings.resize, 'dtype': 'uint8'},
      'checkpoint': trained.checkpoint, 'epoch': trained.epoch,
      'calibration': {'temperature': predictor.decision.temperature, 'threshold': predictor.decision.threshold},
      'validation_scores': scores,
  }


def startup_summary(service: Service) -> dict:
  """What a worker reports when ready, and the supervisor prints."""
  trained = service.predictor.trained
  return {'model': service.metadata['model'], 'checkpoint': trained.checkpoint, 'epoch': trained.epoch,
          'warm_sizes': list(service.predictor.warm_sizes), 'warm_seconds': round(service.warm_seconds, 2),
          'micro_batching': service.settings.micro_batching}


def create_app(service: Service, workers: WorkerStatus | None = None,
               on_started: Callable[[], None] | None = None) -> 'Admission':
  """The ASGI app over a loaded `Service` (see `load_service`): the FastAPI app (`.app`) behind the
  admission limit. `workers` says which worker of how many this is (default: the only one), and
  `on_started` runs once the app has started."""
  settings = service.settings
  predictor = service.predictor
  workers = workers or WorkerStatus()
  # One thread for device calls: the model is one resource, and requests queue for it in order.
  executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='fpclass-device')
  max_wait_s = settings.max_wait_ms / 1000.0
  retry_after = str(RETRY_AFTER_SECONDS)
  state = {}

  async def lifespan(app):
    if settings.micro_batching:
      state['batcher'] = MicroBatcher(predictor.classify, settings.batch_window_ms / 1000.0, settings.max_batch,
                                      executor, max_wait_s)
      batching = asyncio.create_task(state['batcher'].run())
    if on_started is not None:
      on_started()
    yield
    if settings.micro_batching:
      batching.cancel()
    executor.shutdown(wait=False, cancel_futures=True)

  def within_wait(function, arrived: float):
    """`function` for the device thread, refusing when the request has already waited past max_wait_ms."""
    def call(*args):
      if time.monotonic() - arrived > max_wait_s:
        raise Overloaded(f'waited over {settings.max_wait_ms:.0f} ms for the device (config.serve.max_wait_ms)')
      return function(*args)
    return call

  app = fastapi.FastAPI(title=f'fpclass: {service.metadata["name"]}', lifespan=lifespan, docs_url=None,
                        redoc_url=None)
  app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
  admission = Admission.Counter(settings.max_queue)
  app.mount('/static', StaticFiles(directory=STATIC), name='static')

  @app.exception_handler(ApiError)
  async def api_error(request, error: ApiError):
    return responses.JSONResponse({'detail': error.detail}, status_code=error.status)

  @app.exception_handler(Overloaded)
  async def overloaded(request, error: Overloaded):
    return responses.JSONResponse({'detail': f'the server is busy: {error}; retry after {retry_after} s'},
                                  status_code=503, headers={'retry-after': retry_after})

  @app.exception_handler(StarletteHTTPException)
  async def http_error(request, error: StarletteHTTPException):
    return responses.JSONResponse({'detail': one_line(str(error.detail))}, status_code=error.status_code)

  @app.exception_handler(Exception)
  async def unexpected(request, error: Exception):  # a bug, not a bad request: still one line, and logged
    return responses.JSONResponse({'detail': f'internal error: {_one_line_error(error)}'}, status_code=500)

  @app.get('/', include_in_schema=False)
  async def page():
    return responses.FileResponse(STATIC / 'index.html', media_type='text/html')

  def worker_fields() -> dict:
    return {'workers': workers.describe(), 'worker': {'index': workers.index, 'pid': workers.pid}}

  @app.get('/healthz')
  async def healthz():
    batcher = state.get('batcher')
    return {'status': 'ok', 'model': service.metadata['model'], 'epoch': predictor.trained.epoch,
            'micro_batching': settings.micro_batching, 'device_calls': batcher.calls if batcher else None,
            **worker_fields(),
            'queue': {'depth': admission.depth, 'max_queue': settings.max_queue, 'peak': admission.peak,
                      'refused': admission.refused, 'expired': batcher.expired if batcher else None}}

  @app.get('/metadata')
  async def metadata():
    return {**service.metadata, 'max_upload_bytes': settings.max_upload_bytes,
            'max_images_per_request': settings.max_images_per_request,
            'micro_batching': settings.micro_batching, **worker_fields(),
            'queue': {'max_queue': settings.max_queue, 'max_wait_ms': settings.max_wait_ms,
                      'retry_after_s': int(retry_after), 'max_batch': settings.max_batch,
                      'device_call_ms': {str(k): v for k, v in predictor.device_call_ms.items()}}}

  @app.post('/predict')
  async def predict(request: fastapi.Request):
    arrived = time.monotonic()
    if 'batcher' in state:
      with state['batcher'].arriving():
        names, images = await read_images(request, service)
      results = await state['batcher'].submit(images, arrived)
    else:
      names, images = await read_images(request, service)
      results = await asyncio.get_running_loop().run_in_executor(executor, within_wait(predictor.classify, arrived),
                                                                 images)
    body = {'model': service.metadata['model'], 'checkpoint': predictor.trained.checkpoint,
            'epoch': predictor.trained.epoch, 'calibrated': predictor.decision.temperature != 1.0
            or predictor.decision.threshold is not None,
            'predictions': [{'file': name, **result} for name, result in zip(names, results)]}
    if len(results) == 1:  # seed 004's clients send one image and read its class
      body.update(results[0])
    return responses.JSONResponse(body)  # plain JSON: no response-model validation on the hot path

  @app.post('/explain')
  async def explain_image(request: fastapi.Request):
    arrived = time.monotonic()
    _, images = await read_images(request, service, limit=1)
    png = await asyncio.get_running_loop().run_in_executor(executor, within_wait(predictor.overlay_png, arrived),
                                                           images[0])
    return responses.Response(png, media_type='image/png')

  # Outside FastAPI's own middleware: a refusal costs the HTTP parse and a few lines, nothing more, so
  # that clients retrying at once (a load generator) take as little as possible from accepted requests.
  return Admission(app, admission, retry_after)


async def read_images(request, service: Service, limit: int | None = None) -> tuple[list, np.ndarray]:
  """(names, uint8 images (N, H, W, C)) from a multipart or JSON request, or an ApiError naming the problem."""
  limit = limit or service.settings.max_images_per_request
  content_type = request.headers.get('content-type', '').split(';')[0].strip().lower()
  if content_type == 'multipart/form-data':
    try:
      async with request.form(max_files=limit, max_fields=limit + 8) as form:  # closes its spooled files
        uploads = [(key, value) for key, value in form.multi_items() if hasattr(value, 'read')]
        blobs = [(upload.filename or key, await upload.read()) for key, upload in uploads]
    except StarletteHTTPException as e:
      if 'Too many files' in str(e.detail):
        raise too_many(None, limit) from None
      raise ApiError(422, one_line(f'malformed multipart body: {e.detail}')) from None
    if not blobs:
      raise ApiError(422, 'no file in the multipart body: send the image as a file field, e.g. '
                          "curl -F file=@image.png")
  elif content_type == 'application/json':
    blobs = parse_json_images(await request.body(), limit)
  else:
    raise ApiError(415, f'content type {content_type or "(none)"!r}: send multipart/form-data with file fields, '
                        'or application/json {"image": "<base64>"}')
  if len(blobs) > limit:
    raise too_many(len(blobs), limit)
  decoded = []
  for name, data in blobs:
    try:
      decoded.append(decode_bytes(data, service.decode_settings))
    except DecodeError as e:
      raise ApiError(415 if str(e) == UNIDENTIFIED else 422, one_line(f'{name}: {e}')) from None
  return [name for name, _ in blobs], np.stack(decoded)


def parse_json_images(body: bytes, limit: int) -> list[tuple[str, bytes]]:
  """[(name, bytes)] from `{"image": b64}` or `{"images": [b64, ...]}`; data: URLs are accepted."""
  try:
    payload = json.loads(body)
  except (ValueError, UnicodeDecodeError) as e:
    raise ApiError(422, one_line(f'the body is not valid JSON ({e})')) from None
  if not isinstance(payload, dict) or ('image' not in payload and 'images' not in payload):
    raise ApiError(422, 'the JSON body needs an "image" field holding a base64 string (or "images", a list)')
  values = [payload['image']] if 'image' in payload else payload['images']
  if not isinstance(values, list) or not values:
    raise ApiError(422, '"images" must be a non-empty list of base64 strings')
  if len(values) > limit:
    raise too_many(len(values), limit)
  field = 'image' if 'image' in payload else 'images'
  blobs = []
  for i, value in enumerate(values):
    name = field if field == 'image' else f'images[{i}]'
    if not isinstance(value, str):
      raise ApiError(422, f'"{name}" must be a base64 string, got {type(value).__name__}')
    if value.startswith('data:'):
      value = value.partition(',')[2]
    try:
      blobs.append((name, base64.b64decode(value, validate=True)))
    except (binascii.Error, ValueError) as e:
      raise ApiError(422, one_line(f'"{name}" is not valid base64 ({e})')) from None
  return blobs


def too_many(count: int | None, limit: int) -> ApiError:
  if limit == 1:
    return ApiError(413, 'this endpoint takes one image per request')
  return ApiError(413, f'{count or "more"} images in one request: at most {limit} '
                       '(config.serve.max_images_per_request)')


def one_line(text: str) -> str:
  return ' '.join(str(text).split())[:500]


def _one_line_error(error: BaseException) -> str:
  return one_line(f'{type(error).__name__}: {error}')


async def send_json(send, status: int, payload: dict, headers: tuple = ()) -> None:
  """A whole JSON response from ASGI middleware (no app involved), closing the connection's body handling."""
  body = json.dumps(payload).encode()
  await send({'type': 'http.response.start', 'status': status,
              'headers': [(b'content-type', b'application/json'), (b'content-length', str(len(body)).encode()),
                          *headers]})
  await send({'type': 'http.response.body', 'body': body})


class Admission:
  """ASGI middleware: at most `counter.limit` model requests (/predict, /explain) in this worker at once,
  from arrival to answer; past it, 503 with Retry-After at once, before anything of the body is read (the
  cheapest answer there is, so an overloaded worker spends its time on the requests it accepted)."""

  @dataclasses.dataclass
  class Counter:
    limit: int
    depth: int = 0
    peak: int = 0
    refused: int = 0

  def __init__(self, app, counter: 'Admission.Counter', retry_after: str):
    self.app, self.counter = app, counter
    self.headers = ((b'retry-after', retry_after.encode()),)
    self.detail = {'detail': f'the server is busy: this worker holds config.serve.max_queue={counter.limit} '
                             f'requests; retry after {retry_after} s'}

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http' or scope['path'] not in MODEL_PATHS:
      return await self.app(scope, receive, send)
    counter = self.counter
    if counter.depth >= counter.limit:
      counter.refused += 1
      return await send_json(send, 503, self.detail, self.headers)
    counter.depth += 1
    counter.peak = max(counter.peak, counter.depth)
    try:
      await self.app(scope, receive, send)
    finally:
      counter.depth -= 1


class UploadLimit:
  """ASGI middleware: a body over `max_bytes` gets 413, from its Content-Length before anything is read,
  or as soon as the bytes read pass the limit (a chunked upload has no Content-Length)."""

  def __init__(self, app, max_bytes: int):
    self.app, self.max_bytes = app, max_bytes

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    length = dict(scope.get('headers') or []).get(b'content-length')
    if length is not None and length.isdigit() and int(length) > self.max_bytes:
      return await self.too_large(send, int(length))
    received = 0
    started = False

    async def counted_receive():
      nonlocal received
      message = await receive()
      if message['type'] == 'http.request':
        received += len(message.get('body', b''))
        if received > self.max_bytes:
          raise BodyTooLarge()
      return message

    async def tracked_send(message):
      nonlocal started
      started = started or message['type'] == 'http.response.start'
      await send(message)

    try:
      await self.app(scope, counted_receive, tracked_send)
    except BodyTooLarge:
      if not started:
        await self.too_large(send, None)

  async def too_large(self, send, length):
    size = f'of {length} bytes ' if length is not None else ''
    await send_json(send, 413, {'detail': f'upload {size}is over the limit of {self.max_bytes} bytes '
                                          '(config.serve.max_upload_bytes)'}, ((b'connection', b'close'),))


class BodyTooLarge(Exception):
  pass


def bind(host: str, port: int) -> socket.socket:
  """A listening socket bound to (host, port); port 0 takes any free port."""
  family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
  except OSError as e:
    sock.close()
    raise UserInputError(f'config.serve.host={host!r}, config.serve.port={port}: cannot bind ({e.strerror}); '
                         'choose another port, or 0 for any free one') from None
  sock.listen(2048)  # connections made before a worker is ready wait in the backlog instead of being refused
  return sock


def url_of(sock: socket.socket) -> str:
  host, port = sock.getsockname()[:2]
  return f'http://[{host}]:{port}/' if ':' in host else f'http://{host}:{port}/'


def uvicorn_server(app, log_level: str = 'warning') -> 'uvicorn.Server':
  # No X-Forwarded-* handling: the server answers its own clients (behind a proxy, the proxy logs them).
  return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan='on',
                                       timeout_keep_alive=30, proxy_headers=False))


def serve(config, workdir) -> None:
  """Binds the port, starts `serve.workers` worker processes that each load and warm the model, prints the
  URL once all are ready, and serves until SIGINT or SIGTERM (fpclass.modes.serve_supervisor)."""
  settings = ServeSettings.from_config(config.serve)
  check_batch_sizes(settings)
  count = serve_supervisor.default_worker_count(settings.workers)
  sock = bind(settings.host, settings.port)  # before the slow restore: a taken port fails at once
  url = url_of(sock)

  def job(index: int) -> serve_supervisor.WorkerJob:
    return serve_supervisor.WorkerJob(config, str(workdir), sock.fileno(), index, count)

  def ready(info: dict) -> None:
    print(f'serving {info["model"]} ({info["checkpoint"]} checkpoint, epoch {info["epoch"]}; {count} worker'
          f'{"s" if count > 1 else ""}, each compiled batch sizes {tuple(info["warm_sizes"])} in '
          f'{info["warm_seconds"]:.1f}s; micro-batching {"on" if settings.micro_batching else "off"}; 503 past '
          f'{settings.max_queue} requests a worker or {settings.max_wait_ms:g} ms waiting) at {url}', flush=True)

  try:
    serve_supervisor.Supervisor(job, count, sock, worker_timeout_s=settings.worker_timeout_s).run(on_ready=ready)
  finally:
    sock.close()


class BackgroundServer:
  """The app under uvicorn on a thread of this process (tests, notebooks):

      with BackgroundServer(create_app(service)) as server:
        httpx.get(server.url + 'healthz')
  """

  def __init__(self, app, host: str = '127.0.0.1', port: int = 0):
    self.sock = bind(host, port)
    self.url = url_of(self.sock)
    self.server = uvicorn_server(app)
    self.thread = threading.Thread(target=self.server.run, kwargs={'sockets': [self.sock]}, daemon=True)

  def __enter__(self) -> 'BackgroundServer':
    self.thread.start()
    deadline = time.monotonic() + 60
    while not self.server.started:
      if not self.thread.is_alive() or time.monotonic() > deadline:
        raise RuntimeError(f'uvicorn did not start on {self.url}')
      time.sleep(0.02)
    return self

  def __exit__(self, *exc) -> None:
    self.server.should_exit = True
    self.thread.join(timeout=30)
    self.sock.close()
