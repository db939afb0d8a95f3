"""`--mode serve`: the selected checkpoint behind an upload page and a JSON API (FastAPI under uvicorn).

    python launch.py --workdir runs/fp-exp4 --mode serve            # http://127.0.0.1:8000/

Routes: `GET /` (the upload page), `POST /predict`, `POST /explain`, `GET /metadata`, `GET /healthz`.
`serve.workers` processes answer on one port (fpclass.serve); overload is answered 503 with Retry-After, a bad
request 4xx with a one-line reason. Loopback by default. There is no endpoint that trains: training is a
deliberate `launch.py --mode train`. The API, limits and their reasons: docs/operations.md.
"""
from fpclass.config.outputs import ServeSettings
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
