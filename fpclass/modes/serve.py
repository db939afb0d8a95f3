"""`--mode serve`: the selected checkpoint, or an ensemble workdir's weighted members (`--mode ensemble`), behind
an upload page and a JSON API (FastAPI under uvicorn).

    python launch.py --workdir runs/fp-exp4 --mode serve            # http://127.0.0.1:8000/
    python launch.py --workdir runs/fp-sweep/ensemble --mode serve  # the ensemble, as predict mixes it

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
    print(f'serving {info["what"]}: {count} worker{"s" if count > 1 else ""}, each compiled batch sizes '
          f'{tuple(info["warm_sizes"])} in {info["warm_seconds"]:.1f}s; micro-batching '
          f'{"on" if settings.micro_batching else "off"}; 503 past {settings.max_queue} requests a worker or '
          f'{settings.max_wait_ms:g} ms waiting; at {url}', flush=True)

  try:
    serve_supervisor.Supervisor(job, count, sock, worker_timeout_s=settings.worker_timeout_s).run(on_ready=ready)
  finally:
    sock.close()
