"""A local chat-completions server for backend tests: a real socket, deterministic replies, injected faults.

`ChatServer` listens on 127.0.0.1 (a free port) in a daemon thread and answers ``POST /v1/chat/completions``
with a ChatCompletion whose content is ``"images=<n>; last=<text of the last user turn>"``. Every request is
recorded (path, lower-cased headers, JSON body) in `requests`. `fail_next` makes the next k requests fail
with an HTTP status; `misbehave_next` makes them return 200 with a broken body (see MISBEHAVIOURS).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMPLETIONS_PATH = "/v1/chat/completions"
MISBEHAVIOURS = ("malformed", "no_choices", "null_content")


def reply_for(body: dict[str, Any]) -> str:
    """The deterministic reply to a chat-completions request body."""
    images = 0
    last = ""
    for message in body.get("messages", []):
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        images += sum(1 for p in parts if p.get("type") == "image_url")
        if message.get("role") == "user":
            last = "\n".join(p["text"] for p in parts if p.get("type") == "text")
    return f"images={images}; last={last}"


def completion_json(body: dict[str, Any], number: int, content: str | None) -> dict[str, Any]:
    """A ChatCompletion object (as JSON) with one choice carrying `content`."""
    return {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion",
        "created": 1700000000,
        "model": body.get("model", "unknown"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class ChatServer:
    """The server: `base_url` (ends in /v1), `requests`, `fail_next`, `misbehave_next`, `delay`, `close`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.delay = 0.0  # seconds each request waits before answering (to observe concurrency)
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: deque[tuple[int | str, str | None]] = deque()
        self._hold_after: int | None = None
        self.held = threading.Event()  # set when a request is being held (see hold_after)
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        host, port = self._httpd.server_address[:2]
        self.base_url = f"http://{host}:{port}/v1"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.02,), name="chat-server", daemon=True
        )  # a short poll interval makes shutdown quick
        self._thread.start()

    def fail_next(self, k: int, status: int = 500, message: str | None = None) -> None:
        """Answer the next `k` requests with HTTP `status` and an OpenAI-style error body.

        `message` may contain ``{authorization}``, replaced by the request's Authorization header (a server
        that echoes credentials, for redaction tests).
        """
        with self._lock:
            self._faults.extend([(status, message)] * k)

    def misbehave_next(self, k: int, kind: str = "malformed") -> None:
        """Answer the next `k` requests with status 200 and a broken body of `kind` (see MISBEHAVIOURS)."""
        if kind not in MISBEHAVIOURS:
            raise ValueError(f"kind must be one of {MISBEHAVIOURS}, got {kind!r}")
        with self._lock:
            self._faults.extend([(kind, None)] * k)

    def hold_after(self, k: int | None) -> None:
        """Answer `k` requests, then hold later ones unanswered (setting `held`) until `hold_after(None)`, so
        a client can be killed while its call is in flight."""
        with self._lock:
            self._hold_after = k
        if k is None:
            self._release.set()
        else:
            self._release.clear()

    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the recorded requests, in arrival order."""
        return [r["body"] for r in self.requests]

    def close(self) -> None:
        """Stop serving and release the socket."""
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handle(self, handler: BaseHTTPRequestHandler) -> tuple[int, bytes]:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        with self._lock:
            number = len(self.requests) + 1
            self.requests.append(
                {
                    "path": handler.path,
                    "headers": {k.lower(): v for k, v in handler.headers.items()},
                    "body": body,
                }
            )
            fault = self._faults.popleft() if self._faults else None
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            hold = self._hold_after is not None and number > self._hold_after
        try:
            if hold:
                self.held.set()
                self._release.wait(timeout=60)
            if self.delay:
                time.sleep(self.delay)
            return self._answer(handler, body, number, fault)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(
        self,
        handler: BaseHTTPRequestHandler,
        body: dict[str, Any],
        number: int,
        fault: tuple[int | str, str | None] | None,
    ) -> tuple[int, bytes]:
        if handler.path != COMPLETIONS_PATH:
            return 404, _dumps({"error": {"message": f"no route {handler.path}", "type": "not_found"}})
        if fault is None:
            return 200, _dumps(completion_json(body, number, reply_for(body)))
        kind, message = fault
        if isinstance(kind, int):
            text = (message or "injected failure {status}").format(
                status=kind, authorization=handler.headers.get("Authorization", "")
            )
            return kind, _dumps({"error": {"message": text, "type": "server_error", "code": None}})
        if kind == "malformed":
            return 200, b'{"id": "chatcmpl-broken", "choices": [{"message": '
        if kind == "no_choices":
            return 200, _dumps({**completion_json(body, number, None), "choices": []})
        return 200, _dumps(completion_json(body, number, None))


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode("utf-8")


def _make_handler(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as vLLM/SGLang serve it

        def do_POST(self) -> None:
            status, payload = server._handle(self)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    return Handler
