"""A small threaded HTTP server base: JSON in and out, SSE, request log, fault knobs."""

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Faults:
    """What the next generation requests suffer; each counter counts down per request."""

    overloaded: int = 0
    generation_errors: int = 0
    incomplete: int = 0
    delay_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, name: str) -> bool:
        with self.lock:
            left = getattr(self, name)
            if left > 0:
                setattr(self, name, left - 1)
                return True
            return False


Route = Callable[["Handler", Any], None]


class Handler(BaseHTTPRequestHandler):
    server: "StandIn"  # type: ignore[assignment]

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def send_text(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def start_sse(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

    def sse_event(self, payload: Any) -> None:
        # axum writes `data:` with no space; clients strip the prefix either way.
        self.wfile.write(b"data:" + json.dumps(payload).encode() + b"\n\n")
        self.wfile.flush()

    def _dispatch(self, method: str) -> None:
        route = self.server.routes.get((method, self.path.split("?")[0]))
        body: Any = None
        if method == "POST":
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw or b"null")
            except json.JSONDecodeError as e:
                self.server.log(method, self.path, raw.decode(errors="replace"))
                self.send_text(422, f"Failed to parse the request body as JSON: {e}")
                return
        self.server.log(method, self.path, body)
        if route is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        route(self, body)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")


class StandIn(ThreadingHTTPServer):
    """Serves `routes` on 127.0.0.1 (a free port) from a daemon thread; a context manager."""

    daemon_threads = True

    def __init__(self, routes: dict[tuple[str, str], Route]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes = routes
        self.faults = Faults()
        self.requests: list[tuple[str, str, Any]] = []
        self._log_lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def log(self, method: str, path: str, body: Any) -> None:
        with self._log_lock:
            self.requests.append((method, path, body))

    def posted(self, path: str) -> list[Any]:
        with self._log_lock:
            return [body for method, p, body in self.requests if method == "POST" and p == path]

    def __enter__(self) -> "StandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
