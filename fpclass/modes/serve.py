"""`--mode serve`: the selected checkpoint behind an upload page and a JSON API (FastAPI under uvicorn).

    python launch.py --workdir runs/fp-exp4 --mode serve            # http://127.0.0.1:8000/

- `GET /`: the upload page (pick or drop an image; its class, a bar per class probability, and a Grad-CAM
  toggle). Its files ship in the package (`serve_static/`) and load nothing from elsewhere.
- `POST /predict`: one or more images as multipart file fields, or JSON `{"image": "<base64>"}` (or
  `{"images": [...]}`) as seed 004's app took them. Returns the class and per-class probabilities of each
  image, with the model name and checkpoint epoch.
- `POST /explain`: the Grad-CAM overlay (PNG) of one image, for its predicted class.
- `GET /metadata`: class names, input size, model, checkpoint, calibration and validation scores;
  `GET /healthz`: the health check.

The checkpoint is restored once. Its predict function is jit-compiled and run once for each of
`serve.warm_batch_sizes` before the port opens, and every device call is padded up to one of those sizes,
so no request waits for a compilation. With `serve.micro_batching`, requests that arrive within
`serve.batch_window_ms` of each other share one device call of up to `serve.max_batch` images (one asyncio
queue, one worker task); without it each request makes its own call. Device calls run one at a time on
their own thread, so the event loop keeps reading requests meanwhile.

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
import pathlib
import socket
import threading
import time

import jax
import numpy as np
from PIL import Image

from fpclass.config import DecodeSettings, ExplainSettings, ServeSettings
from fpclass.data.decode import DecodeError, decode_bytes
from fpclass.errors import UserInputError
from fpclass.inference import Trained, load_trained
from fpclass.modes import explain
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


class ApiError(Exception):
  """A bad request: its HTTP status and one-line reason."""

  def __init__(self, status: int, detail: str):
    super().__init__(detail)
    self.status, self.detail = status, detail


@dataclasses.dataclass
class Predictor:
  """The served model: one jitted predict function, compiled for each warm batch size at start-up."""
  trained: Trained
  decision: Decision
  warm_sizes: tuple
  explainer: object = None

  def __post_init__(self):
    self.warm_sizes = tuple(sorted(set(int(b) for b in self.warm_sizes)))
    self._predict = jax.jit(self.trained.task.predict)

  def warm(self, image_shape) -> float:
    """Compiles and runs every warm size (and Grad-CAM for one image); returns the seconds it took."""
    start = time.perf_counter()
    for size in self.warm_sizes:
      self.logits(np.zeros((size, *image_shape), np.uint8))
    if self.explainer is not None:
      self.explainer.maps(np.zeros((1, *image_shape), np.uint8), np.zeros(1, np.int32))
    return time.perf_counter() - start

  def logits(self, images: np.ndarray) -> np.ndarray:
    """Logits of any number of images: chunks of the largest warm size, each padded up to a warm size."""
    out = []
    largest = self.warm_sizes[-1]
    for start in range(0, len(images), largest):
      chunk = images[start:start + largest]
      size = next(b for b in self.warm_sizes if b >= len(chunk))
      padded = np.zeros((size, *chunk.shape[1:]), np.uint8)
      padded[:len(chunk)] = chunk
      state = self.trained.state
      out.append(np.asarray(jax.device_get(self._predict(state.params, state.batch_stats, padded)))[:len(chunk)])
    return np.concatenate(out)

  def classify(self, images: np.ndarray) -> list[dict]:
    """One result per image: its class name and every class's probability."""
    probs, pred = self.decision(self.logits(images))
    names = self.trained.class_names
    return [{'class': names[int(k)], 'probabilities': {c: float(p[i]) for i, c in enumerate(names)}}
            for p, k in zip(probs, pred)]

  def overlay_png(self, image: np.ndarray) -> bytes:
    """The Grad-CAM overlay of one image for its predicted class, as PNG bytes."""
    _, pred = self.decision(self.logits(image[None]))
    maps, _ = self.explainer.maps(image[None], pred.astype(np.int32))
    buffer = io.BytesIO()
    Image.fromarray(overlay_rgb(image, maps[0], self.explainer.settings.alpha), 'RGB').save(buffer, format='PNG')
    return buffer.getvalue()


class MicroBatcher:
  """Gathers concurrent requests into shared device calls.

  A batch closes when it holds `max_batch` images, when `window_s` has passed since its first request
  arrived (requests that queued while the device was busy do not wait again), or as soon as no other
  request is being read: a lone request is not held back for company that is not coming. A request is
  never split across batches.
  """

  def __init__(self, run_batch, window_s: float, max_batch: int, executor):
    self.run_batch, self.window_s, self.max_batch, self.executor = run_batch, window_s, max_batch, executor
    self.queue: asyncio.Queue = asyncio.Queue()
    self.reading = 0  # requests between arrival and `submit` (their bodies are being read and decoded)
    self.calls = 0    # device calls made, for /healthz and the load test

  @contextlib.contextmanager
  def arriving(self):
    """Counts a request as coming while its body is read, so an open batch waits for it."""
    self.reading += 1
    try:
      yield
    finally:
      self.reading -= 1

  async def submit(self, images: np.ndarray) -> list:
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    self.queue.put_nowait((images, future, loop.time()))
    return await future

  async def run(self) -> None:
    """The single worker task: forms a batch, runs it on the device thread, hands out the results."""
    loop = asyncio.get_running_loop()
    carried = None
    while True:
      first = carried or await self.queue.get()
      carried, batch, count = None, [first], len(first[0])
      deadline = first[2] + self.window_s
      while count < self.max_batch:
        try:
          item = self.queue.get_nowait()
        except asyncio.QueueEmpty:
          remaining = deadline - loop.time()
          if remaining <= 0 or not self.reading:
            break
          try:
            item = await asyncio.wait_for(self.queue.get(), remaining)
          except asyncio.TimeoutError:
            break
        if count + len(item[0]) > self.max_batch:
          carried = item  # it starts the next batch
          break
        batch.append(item)
        count += len(item[0])
      images = np.concatenate([images for images, _, _ in batch])
      try:
        results = await loop.run_in_executor(self.executor, self.run_batch, images)
        error = None
      except Exception as e:  # noqa: BLE001 - handed to each waiting request, never lost in the worker
        results, error = None, e
      self.calls += 1
      offset = 0
      for images_i, future, _ in batch:
        if not future.done():  # a request whose client went away has been cancelled
          if error is None:
            future.set_result(results[offset:offset + len(images_i)])
          else:
            future.set_exception(error)
        offset += len(images_i)


@dataclasses.dataclass
class Service:
  """What the app serves: the predictor, the settings, and what /metadata reports."""
  predictor: Predictor
  settings: ServeSettings
  decode_settings: DecodeSettings
  metadata: dict
  warm_seconds: float = 0.0


def load_service(config, workdir, settings: ServeSettings | None = None) -> Service:
  """Restores the checkpoint of `workdir` once and warms its predict (and Grad-CAM) function."""
  workdir = pathlib.Path(workdir)
  settings = settings or ServeSettings.from_config(config.serve)
  if settings.max_batch > max(settings.warm_batch_sizes):
    raise UserInputError(f'config.serve.max_batch={settings.max_batch} is over the largest of '
                         f'config.serve.warm_batch_sizes={settings.warm_batch_sizes}: a batch that size would '
                         'compile on a request; add it to warm_batch_sizes')
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


def create_app(service: Service) -> 'fastapi.FastAPI':
  """The FastAPI app over a loaded `Service` (see `load_service`)."""
  settings = service.settings
  predictor = service.predictor
  # One thread for device calls: the model is one resource, and requests queue for it in order.
  executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='fpclass-device')
  state = {}

  async def lifespan(app):
    if settings.micro_batching:
      state['batcher'] = MicroBatcher(predictor.classify, settings.batch_window_ms / 1000.0, settings.max_batch,
                                      executor)
      worker = asyncio.create_task(state['batcher'].run())
    yield
    if settings.micro_batching:
      worker.cancel()
    executor.shutdown(wait=False, cancel_futures=True)

  app = fastapi.FastAPI(title=f'fpclass: {service.metadata["name"]}', lifespan=lifespan, docs_url=None,
                        redoc_url=None)
  app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
  app.mount('/static', StaticFiles(directory=STATIC), name='static')

  @app.exception_handler(ApiError)
  async def api_error(request, error: ApiError):
    return responses.JSONResponse({'detail': error.detail}, status_code=error.status)

  @app.exception_handler(StarletteHTTPException)
  async def http_error(request, error: StarletteHTTPException):
    return responses.JSONResponse({'detail': one_line(str(error.detail))}, status_code=error.status_code)

  @app.exception_handler(Exception)
  async def unexpected(request, error: Exception):  # a bug, not a bad request: still one line, and logged
    return responses.JSONResponse({'detail': f'internal error: {_one_line_error(error)}'}, status_code=500)

  @app.get('/', include_in_schema=False)
  async def page():
    return responses.FileResponse(STATIC / 'index.html', media_type='text/html')

  @app.get('/healthz')
  async def healthz():
    batcher = state.get('batcher')
    return {'status': 'ok', 'model': service.metadata['model'], 'epoch': predictor.trained.epoch,
            'micro_batching': settings.micro_batching, 'device_calls': batcher.calls if batcher else None}

  @app.get('/metadata')
  async def metadata():
    return {**service.metadata, 'max_upload_bytes': settings.max_upload_bytes,
            'max_images_per_request': settings.max_images_per_request,
            'micro_batching': settings.micro_batching}

  @app.post('/predict')
  async def predict(request: fastapi.Request):
    if 'batcher' in state:
      with state['batcher'].arriving():
        names, images = await read_images(request, service)
      results = await state['batcher'].submit(images)
    else:
      names, images = await read_images(request, service)
      results = await asyncio.get_running_loop().run_in_executor(executor, predictor.classify, images)
    body = {'model': service.metadata['model'], 'checkpoint': predictor.trained.checkpoint,
            'epoch': predictor.trained.epoch, 'calibrated': predictor.decision.temperature != 1.0
            or predictor.decision.threshold is not None,
            'predictions': [{'file': name, **result} for name, result in zip(names, results)]}
    if len(results) == 1:  # seed 004's clients send one image and read its class
      body.update(results[0])
    return responses.JSONResponse(body)  # plain JSON: no response-model validation on the hot path

  @app.post('/explain')
  async def explain_image(request: fastapi.Request):
    _, images = await read_images(request, service, limit=1)
    png = await asyncio.get_running_loop().run_in_executor(executor, predictor.overlay_png, images[0])
    return responses.Response(png, media_type='image/png')

  return app


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
    body = json.dumps({'detail': f'upload {size}is over the limit of {self.max_bytes} bytes '
                                 '(config.serve.max_upload_bytes)'}).encode()
    await send({'type': 'http.response.start', 'status': 413,
                'headers': [(b'content-type', b'application/json'), (b'content-length', str(len(body)).encode()),
                            (b'connection', b'close')]})
    await send({'type': 'http.response.body', 'body': body})


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
  sock.listen(2048)  # connections made before uvicorn starts wait in the backlog instead of being refused
  return sock


def url_of(sock: socket.socket) -> str:
  host, port = sock.getsockname()[:2]
  return f'http://[{host}]:{port}/' if ':' in host else f'http://{host}:{port}/'


def uvicorn_server(app, log_level: str = 'warning') -> 'uvicorn.Server':
  return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan='on',
                                       timeout_keep_alive=30))


def serve(config, workdir) -> None:
  """Loads and warms the model, binds the port, prints the URL, and serves until interrupted."""
  settings = ServeSettings.from_config(config.serve)
  sock = bind(settings.host, settings.port)  # before the slow restore: a taken port fails at once
  service = load_service(config, workdir, settings)
  server = uvicorn_server(create_app(service), log_level='info')
  print(f'serving {service.metadata["model"]} ({service.predictor.trained.checkpoint} checkpoint, epoch '
        f'{service.predictor.trained.epoch}; compiled batch sizes {service.predictor.warm_sizes} in '
        f'{service.warm_seconds:.1f}s; micro-batching {"on" if settings.micro_batching else "off"}) at '
        f'{url_of(sock)}', flush=True)
  server.run(sockets=[sock])  # on Ctrl-C, uvicorn shuts down gracefully, then raises KeyboardInterrupt again


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
