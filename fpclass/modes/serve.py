"""`--mode serve`: the selected checkpoint behind an upload page and a JSON API (FastAPI under uvicorn).

    python launch.py --workdir runs/fp-exp4 --mode serve            # http://127.0.0.1:8000/

- `GET /`: the upload page (pick or drop an image; its class, a bar per class probability, and a Grad-CAM
  toggle). Its files ship in the package (`fpclass/serve/static/`) and load nothing from elsewhere.
- `POST /predict`: one or more images as multipart file fields, or JSON `{"image": "<base64>"}` (or
  `{"images": [...]}`) as a single-image client sends them. Returns the class and per-class probabilities of each
  image, with the model name and checkpoint epoch.
- `POST /explain`: the Grad-CAM overlay (PNG) of one image, for its predicted class.
- `GET /metadata`: class names, input size, model, checkpoint, calibration and validation scores, the
  queue's limits; `GET /healthz`: the health check. Both say which worker answered and how many are up.

`serve.workers` processes answer on the one port (fpclass.serve.supervisor starts them, replaces
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
from fpclass.config import ServeSettings
from fpclass.serve import supervisor as serve_supervisor
from fpclass.serve.server import bind, url_of
from fpclass.serve.service import check_batch_sizes


def serve(config, workdir) -> None:
  """Binds the port, starts `serve.workers` worker processes that each load and warm the model, prints the
  URL once all are ready, and serves until SIGINT or SIGTERM (fpclass.serve.supervisor)."""
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
