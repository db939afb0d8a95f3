"""The listening socket and uvicorn: bound before the slow restore, shared by the workers, or served on a
thread of this process (`BackgroundServer`: tests, notebooks)."""
import socket
import threading
import time

from fpclass.errors import UserInputError

try:
  import uvicorn
except ImportError as e:  # an optional extra: say how to get it rather than fail with a bare import error
  raise UserInputError(f'--mode serve needs FastAPI, uvicorn and python-multipart ({e}); install them with '
                       "pip install 'fpclass[serve]'") from None

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
