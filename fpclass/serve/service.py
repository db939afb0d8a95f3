"""The served model: a restored checkpoint, or an ensemble workdir's weighted members (`fpclass.infer.ensemble`:
one program runs them all and mixes their probabilities, as predict mixes them), its warmed predict function, and
the micro-batcher that groups requests into device calls; what /metadata and /healthz report about it.

One image's result (`Predictor.classify`) depends on the model's head:
- single-label: {"class": name, "probabilities": {class: p}} (softmax probabilities, or the stored
  temperature and two-class threshold of `--mode calibrate`);
- multi-label (head 'multilabel'): {"labels": [names], "probabilities": {class: p}}, each p the class's own
  sigmoid probability and `labels` the classes, in class order, whose probability is at least their
  threshold (the per-label thresholds stored by `--mode calibrate`, else 0.5); [] when none is. There is no
  "class": an image may have several labels or none.
With config.ood.enabled (the default) each result also holds "ood_score" and "unknown": the image looks like
none of the classes (`fpclass.deploy.ood`: its score past the threshold fitted on held-out images; computed in
the same program as the logits, and fitted in memory when the workdir holds no ood.npz).
"""
import asyncio
import contextlib
import dataclasses
import io
import json
import math
import os
import pathlib
import time
from typing import NamedTuple

import numpy as np
from PIL import Image

from fpclass.analysis.calibration import Decision
from fpclass.config.inputs import DecodeSettings
from fpclass.config.outputs import ExplainSettings, OodSettings, ServeSettings
from fpclass.deploy import ood
from fpclass.errors import UserInputError
from fpclass.explain.explainer import build_explainer, overlay_rgb
from fpclass.infer.ensemble import WeightedEnsemble, load_model
from fpclass.infer.inference import Trained
from fpclass.train.batches import in_fixed_batches

STATIC = pathlib.Path(__file__).resolve().parent / 'static'
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
  """The served model's predict program (a run's: training's own; an ensemble's: its members' mixed), compiled
  for each warm batch size at start-up. `explainer` is None where Grad-CAM cannot explain the model (an
  ensemble): /explain then answers 404. `scorer` (an `ood.Scorer`) adds each image's OOD score, from the same
  program as its logits; None with config.ood off."""
  trained: Trained | WeightedEnsemble
  decision: Decision
  warm_sizes: tuple
  explainer: object = None
  scorer: ood.Scorer | None = None
  device_call_ms: dict = dataclasses.field(default_factory=dict)  # per warm size: one call's time at start-up

  def __post_init__(self):
    self.warm_sizes = tuple(sorted(set(int(b) for b in self.warm_sizes)))

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
    return self.outputs(images)[0]

  def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits, OOD scores or None) of any number of images, batched as `logits`."""
    if self.scorer is None:
      return in_fixed_batches(self.trained.batch_logits, images, self.warm_sizes), None
    return in_fixed_batches(self.scorer.batch, images, self.warm_sizes)

  @property
  def multilabel(self) -> bool:
    return self.decision.head == 'multilabel'

  @property
  def calibrated(self) -> bool:
    """Whether a stored calibration changes the answers: a temperature, a two-class threshold, or multi-label
    thresholds other than 0.5."""
    decision = self.decision
    return (decision.temperature != 1.0 or decision.threshold is not None
            or (self.multilabel and any(t != 0.5 for t in decision.label_thresholds(len(self.trained.class_names)))))

  def label_thresholds(self) -> dict | None:
    """Multi-label: {class name: decision threshold}; None for a single-label model."""
    if not self.multilabel:
      return None
    names = self.trained.class_names
    return dict(zip(names, self.decision.label_thresholds(len(names)).tolist()))

  def classify(self, images: np.ndarray) -> list[dict]:
    """One result per image: every class's probability, and its class name (single-label) or the list of
    class names at or above their thresholds (multi-label: `labels`, possibly empty); with the OOD score, its
    value and whether it is past the threshold (`unknown`)."""
    logits, scores = self.outputs(images)
    probs, pred = self.decision(logits)
    names = self.trained.class_names
    if self.multilabel:
      results = [{'labels': [names[k] for k in np.flatnonzero(row)], 'probabilities': dict(zip(names, p.tolist()))}
                 for p, row in zip(probs, pred)]
    else:
      results = [{'class': names[int(k)], 'probabilities': dict(zip(names, p.tolist()))} for p, k in zip(probs, pred)]
    if scores is not None:
      for result, score in zip(results, scores.tolist()):
        result.update(ood_score=score, unknown=bool(score > self.scorer.threshold))
    return results

  def explain(self, image: np.ndarray) -> tuple[bytes, str]:
    """(PNG bytes, class name): the Grad-CAM overlay of one image for its predicted class, or for a
    multi-label model its most probable class (it may have several labels, or none)."""
    if self.explainer is None:
      raise ApiError(404, f'this server serves a {self.trained.checkpoint}: Grad-CAM explains one model; serve a '
                          'member\'s workdir (or a fold soup\'s) for /explain')
    probs, pred = self.decision(self.logits(image[None]))
    target = probs.argmax(1) if self.multilabel else pred
    maps, _ = self.explainer.maps(image[None], target.astype(np.int32))
    buffer = io.BytesIO()
    Image.fromarray(overlay_rgb(image, maps[0], self.explainer.settings.alpha), 'RGB').save(buffer, format='PNG')
    return buffer.getvalue(), self.trained.class_names[int(target[0])]

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
  pids: tuple = ()                 # every live worker's pid, as the supervisor last told (a worker's own alone)

  def update(self, message: dict) -> None:
    self.up = int(message.get('workers_up', self.up))
    self.configured = int(message.get('workers', self.configured))
    self.pids = tuple(message.get('worker_pids', self.pids))

  def describe(self) -> dict:
    return {'up': self.up, 'configured': self.configured, 'pids': list(self.pids or (self.pid,))}


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
  """Restores the checkpoint of `workdir` once and warms its predict (and Grad-CAM) function. Where a served
  job's config enters: its serve, explain and ood sections are parsed here, once per worker; the model's own
  sections ride on the restored model."""
  workdir = pathlib.Path(workdir)
  settings = settings or ServeSettings.from_config(config.serve)
  check_batch_sizes(settings)
  trained = load_model(config, workdir)   # a run's checkpoint, or an ensemble workdir's weighted members
  decode_settings = trained.settings.data.decode
  image_shape = (decode_settings.height, decode_settings.width, decode_settings.channels)
  explain_settings = dataclasses.replace(ExplainSettings.from_config(config.explain), guided=False, batch_size=1)
  explainer = (None if isinstance(trained, WeightedEnsemble)
               else build_explainer(trained, explain_settings, image_shape))
  ood_settings = OodSettings.from_config(config.ood)
  scorer = (ood.Scorer(trained, ood.for_model(trained, workdir, ood_settings, store=False))
            if ood_settings.enabled else None)
  predictor = Predictor(trained, Decision.for_model(trained, settings.calibrated), settings.warm_batch_sizes,
                        explainer, scorer)
  warm_seconds = predictor.warm(image_shape)
  return Service(predictor, settings, decode_settings, describe(str(config.name), workdir, trained, decode_settings, predictor),
                 warm_seconds)


def describe(name: str, workdir, trained: Trained | WeightedEnsemble, decode_settings: DecodeSettings,
             predictor: Predictor) -> dict:
  """GET /metadata: the model and what it expects, and its validation scores (scores.json) if evaluated; the OOD
  score and threshold (or None); for an ensemble its members, their models and weights, and the cross-fitted
  scores of --mode ensemble's table."""
  ensemble = isinstance(trained, WeightedEnsemble)
  scores = None
  scores_path = pathlib.Path(workdir) / 'scores.json'
  if scores_path.is_file():
    try:
      scores = {k: v for k, v in json.loads(scores_path.read_text()).items()
                if isinstance(v, (int, float, str)) or v is None}
    except (OSError, ValueError):
      scores = None
  calibration = {'temperature': predictor.decision.temperature, 'threshold': predictor.decision.threshold}
  if predictor.multilabel:  # a class is predicted when its probability reaches its threshold
    calibration['thresholds'] = predictor.label_thresholds()
  described = {
      'name': name, 'model': 'ensemble' if ensemble else trained.settings.model.name,
      'head': trained.task.head,
      'class_names': list(trained.class_names),
      'input': {'height': decode_settings.height, 'width': decode_settings.width,
                'channels': decode_settings.channels, 'resize': decode_settings.resize, 'dtype': 'uint8'},
      'checkpoint': trained.checkpoint, 'epoch': trained.epoch,
      'calibration': calibration,
      'validation_scores': scores,
      'explain': predictor.explainer is not None,
      'ood': ood.describe(predictor.scorer.fitted) if predictor.scorer is not None else None,
  }
  if ensemble:
    described['ensemble'] = dict(trained.describe(), cross_fitted=_ensemble_table(workdir))
  return described


def _ensemble_table(workdir) -> list | None:
  """The rows of --mode ensemble's table (best single, ensemble, soup: cross-fitted scores with intervals), from
  the ensemble.json beside the served ensemble; None for a folder without one (`soup/`)."""
  try:
    record = json.loads((pathlib.Path(workdir) / 'ensemble.json').read_text())
    return [dict(row, metric=record['metric']) for row in record['table']]
  except (OSError, ValueError, KeyError, TypeError):
    return None


def startup_summary(service: Service) -> dict:
  """What a worker reports when ready, and the supervisor prints (`what`: the model in a few words)."""
  trained = service.predictor.trained
  if isinstance(trained, WeightedEnsemble):
    members = service.metadata['ensemble']['members']
    what = (f'an ensemble of {len(trained.members)} models ('
            + ', '.join(f'{m["folder"]} x{m["weight"]:.2f}' for m in members) + ')')
  else:
    what = f'{service.metadata["model"]} ({trained.checkpoint} checkpoint, epoch {trained.epoch})'
  return {'model': service.metadata['model'], 'checkpoint': trained.checkpoint, 'epoch': trained.epoch,
          'what': what, 'warm_sizes': list(service.predictor.warm_sizes),
          'warm_seconds': round(service.warm_seconds, 2), 'micro_batching': service.settings.micro_batching}
