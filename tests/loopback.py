"""A loopback HTTP server for download tests: Range requests, interrupted transfers, web pages."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Behaviour:
    """What the server does. ``cut_first``: path -> bytes sent before dropping the first response."""

    files: dict[str, bytes]
    cut_first: dict[str, int] = field(default_factory=dict)
    ignore_range: bool = False
    content_type: str = "application/octet-stream"
    ranges: list[str | None] = field(default_factory=list)  # the Range header of every request


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        behaviour: Behaviour = self.server.behaviour
        body = behaviour.files.get(self.path)
        requested = self.headers.get("Range")
        behaviour.ranges.append(requested)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if requested and not behaviour.ignore_range:
            start = int(requested.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        chunk = body[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", behaviour.content_type)
        self.send_header("Content-Length", str(len(chunk)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        cut = behaviour.cut_first.pop(self.path, None)
        self.wfile.write(chunk if cut is None else chunk[:cut])
        if cut is not None:
            self.close_connection = True

    def log_message(self, *args):
        pass


@contextmanager
def serve(behaviour: Behaviour):
    """Serve ``behaviour`` on 127.0.0.1; yields the base URL (``http://127.0.0.1:PORT``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.behaviour = behaviour
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
