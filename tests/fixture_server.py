"""A tiny HTTP server on 127.0.0.1 for download tests: serves bytes, honours Range, can misbehave.

``server.files[path] = bytes`` publishes a file.  ``server.truncate[path] = n`` makes the next
``n`` responses for ``path`` stop after half of their body (the connection closes early, the
``Content-Length`` header still promises the whole body).  ``server.ignore_range = True``
answers every request with the whole file (``200``).  ``server.requests`` records
``(path, Range header)`` for each request.
"""
from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and not srv.ignore_range:
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if srv.truncate.get(self.path, 0) > 0:
            srv.truncate[self.path] -= 1
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


class FixtureServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.truncate: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def close(self):
        self.shutdown()
        self.server_close()


def online(host: str) -> bool:
    """Whether ``host:443`` answers: tests of offline behaviour skip when the network is reachable."""
    try:
        socket.create_connection((host, 443), timeout=2).close()
        return True
    except OSError:
        return False
