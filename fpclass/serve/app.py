"""The FastAPI app: routes, the admission limit that answers overload with 503, and the upload limit.

The JSON API (also the OpenAPI description, GET /openapi.json):

- POST /predict: images as multipart file fields, or JSON {"image": "<base64>"} / {"images": [...]}.
  The answer holds "model", "checkpoint", "epoch", "calibrated" and "predictions", one per image in order:
  - single-label model: {"file", "class": name, "probabilities": {class: p}} (p sum to 1);
  - multi-label: {"file", "labels": [names], "probabilities": {class: sigmoid p}}, "labels" the classes at or
    above their threshold ([] for none); the answer adds "head": "multilabel" and "thresholds" {class: t}.
  Each result adds "ood_score" and "unknown" (config.ood); one image's fields are also at the top level.
- POST /explain: one image; the Grad-CAM overlay PNG for its predicted class (multi-label: its most probable
  class), named URL-encoded in the X-Explained-Class header; 404 where "explain" is false (an ensemble).
- GET /metadata: model, head, class names, input, calibration, limits, "explain", "ood", an ensemble's members.
- GET /healthz: liveness, queue and workers; "head", and for a multi-label model its "thresholds".
A bad request gets a 4xx with {"detail": one line}; the server goes on serving.
"""
import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import json
import time
import urllib.parse
from typing import Callable

import numpy as np

from fpclass.data.decode import DecodeError, decode_bytes
from fpclass.errors import UserInputError
from fpclass.serve.service import (
  MODEL_PATHS,
  RETRY_AFTER_SECONDS,
  STATIC,
  UNIDENTIFIED,
  ApiError,
  MicroBatcher,
  Overloaded,
  Service,
  WorkerStatus,
)

try:
  import fastapi
  import python_multipart  # noqa: F401 - starlette parses multipart bodies with it
  from fastapi import responses
  from fastapi.staticfiles import StaticFiles
  from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # an optional extra: say how to get it rather than fail with a bare import error
  raise UserInputError(f'--mode serve needs FastAPI, uvicorn and python-multipart ({e}); install them with '
                       "pip install 'fpclass[serve]'") from None

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
                        redoc_url=None, description=(__doc__ or '').partition('\n\n')[2])
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

  thresholds = predictor.label_thresholds()  # multi-label: {class: threshold}; None for single-label
  model_fields = {'head': 'multilabel', 'thresholds': thresholds} if predictor.multilabel else {}

  @app.get('/healthz')
  async def healthz():
    batcher = state.get('batcher')
    return {'status': 'ok', 'model': service.metadata['model'], 'head': predictor.trained.task.head,
            **({'thresholds': thresholds} if thresholds is not None else {}), 'epoch': predictor.trained.epoch,
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

  @app.post('/predict', openapi_extra=PREDICT_OPENAPI)
  async def predict(request: fastapi.Request):
    """Classifies the images of a multipart or JSON body; multi-label models answer "labels" (see the API
    description) instead of "class"."""
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
            'epoch': predictor.trained.epoch, 'calibrated': predictor.calibrated, **model_fields,
            'predictions': [{'file': name, **result} for name, result in zip(names, results)]}
    if len(results) == 1:  # a client that sends one image reads its class (multi-label: its labels)
      body.update(results[0])
    return responses.JSONResponse(body)  # plain JSON: no response-model validation on the hot path

  @app.post('/explain')
  async def explain_image(request: fastapi.Request):
    arrived = time.monotonic()
    _, images = await read_images(request, service, limit=1)
    png, explained = await asyncio.get_running_loop().run_in_executor(executor,
                                                                      within_wait(predictor.explain, arrived),
                                                                      images[0])
    return responses.Response(png, media_type='image/png',
                              headers={'x-explained-class': urllib.parse.quote(explained, safe='')})

  # Outside FastAPI's own middleware: a refusal costs the HTTP parse and a few lines, nothing more, so
  # that clients retrying at once (a load generator) take as little as possible from accepted requests.
  return Admission(app, admission, retry_after)


_PROBABILITIES = {'type': 'object', 'additionalProperties': {'type': 'number'},
                  'description': 'every class: its probability (multi-label: its own sigmoid probability)'}
_RESULT = {'type': 'object', 'properties': {
    'file': {'type': 'string', 'description': 'the file field name, or image / images[i] for JSON'},
    'class': {'type': 'string', 'description': 'single-label models: the predicted class'},
    'labels': {'type': 'array', 'items': {'type': 'string'},
               'description': 'multi-label models: the classes whose probability is at least their threshold, '
                              'in class order ([] when none is)'},
    'probabilities': _PROBABILITIES,
    'ood_score': {'type': 'number', 'description': 'with config.ood.enabled: higher = less like the training images'},
    'unknown': {'type': 'boolean', 'description': 'with config.ood.enabled: ood_score is past the threshold of '
                                                  '/metadata\'s "ood": the image looks like none of the classes'}}}
PREDICT_OPENAPI = {
    'requestBody': {'required': True, 'content': {
        'multipart/form-data': {'schema': {'type': 'object', 'additionalProperties': {
            'type': 'string', 'format': 'binary'}}},
        'application/json': {'schema': {'type': 'object', 'properties': {
            'image': {'type': 'string', 'description': 'base64 (or a data: URL)'},
            'images': {'type': 'array', 'items': {'type': 'string'}}}}}}},
    'responses': {'200': {'description': 'one result per image, and the single image\'s fields at the top level',
                          'content': {'application/json': {'schema': {'type': 'object', 'properties': {
                              'model': {'type': 'string'}, 'checkpoint': {'type': 'string'},
                              'epoch': {'type': 'integer'}, 'calibrated': {'type': 'boolean'},
                              'head': {'type': 'string', 'description': "multi-label models: 'multilabel'"},
                              'thresholds': {**_PROBABILITIES,
                                             'description': 'multi-label models: every class: its threshold'},
                              'predictions': {'type': 'array', 'items': _RESULT},
                              **_RESULT['properties']}}}}},
                  '4XX': {'description': 'a bad request: {"detail": one line naming the problem}'},
                  '503': {'description': 'the server is busy: retry after the Retry-After header'}}}


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


