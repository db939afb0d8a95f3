"""One server worker process: `python -m fpclass.serve.worker`, started by the supervisor
(fpclass.serve.supervisor), never by hand.

It reads its job from stdin, applies the process-wide settings of a process that does not train (as the
mode runner does: on a GPU it allocates as it goes, so the workers share the device), restores and warms
its own model, says it is ready, and serves the inherited listening socket under uvicorn until its stdin
closes (the supervisor stops it, or is gone). Meanwhile each line on stdin tells it how many workers are up,
and its event loop says on stdout once a second that it is alive (the supervisor's hang check).
"""
import asyncio
import json
import socket
import sys
import threading

from absl import logging

from fpclass.config.inputs import StorageSettings
from fpclass.errors import UserInputError
from fpclass.runtime import process
from fpclass.serve.app import create_app
from fpclass.serve.server import uvicorn_server
from fpclass.serve.service import WorkerStatus, load_service, startup_summary
from fpclass.serve.supervisor import HEARTBEAT_SECONDS, read_job, send_message


def main() -> int:
  job = read_job(sys.stdin.buffer)
  logging.set_verbosity(logging.WARNING)  # as launch.py: warnings and errors reach the supervisor's stderr
  process.setup(trains=False, cache_dir=StorageSettings.from_config(job.config.data).cache_dir)
  try:
    service = load_service(job.config, job.workdir)
  except UserInputError as e:
    send_message({'error': str(e), 'user': True})
    return 2
  status = WorkerStatus(index=job.index, configured=job.workers, up=0)
  sock = socket.socket(fileno=job.fd)

  beats = []

  async def beat():
    while True:   # from the event loop: a loop that is blocked stops beating (the supervisor's hang check)
      await asyncio.sleep(HEARTBEAT_SECONDS)
      send_message({'alive': True})

  def started():   # runs on the event loop, in the app's start-up
    send_message({'ready': {**startup_summary(service), 'pid': status.pid}})
    beats.append(asyncio.get_running_loop().create_task(beat()))

  server = uvicorn_server(create_app(service, status, on_started=started))

  def listen():
    for line in sys.stdin.buffer:  # the number of workers up, whenever it changes
      try:
        status.update(json.loads(line))
      except (ValueError, TypeError):
        continue
    server.should_exit = True  # stdin closed: finish the requests held, then exit

  threading.Thread(target=listen, name='fpclass-supervisor', daemon=True).start()
  server.run(sockets=[sock])
  return 0


if __name__ == '__main__':
  sys.exit(main())
