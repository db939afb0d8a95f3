"""Serving a trained workdir: the model behind a JSON API and an upload page (FastAPI under uvicorn), one
concern a module: `service` (the restored, warmed predictor and the micro-batcher), `app` (the routes,
admission and upload limits), `server` (sockets and uvicorn), `supervisor` and `worker` (the worker
processes behind one port). `--mode serve` (fpclass.modes.serve) starts it."""
