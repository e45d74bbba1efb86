"""Annotation faults (#21 6c, 6h): a sample whose request fails after every retry, or whose HTTP body is
not JSON, is stored as a failure and the run goes on; `retry_failed` re-asks it. The cache key does not
depend on the server's address."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from drivedistill import registry
from drivedistill.annotate.cache import AnnotationCache
from drivedistill.annotate.cli import annotate_store
from drivedistill.annotate.openai import OpenAIConfig
from tests.test_annotate_openai import KEY, Q1, Q2, Source


class PlannedServer:
    """Answers request number n (0-based, in arrival order) as `plan(n)` says: ok | 500 | garbage."""

    def __init__(self, plan: Callable[[int], str]) -> None:
        self.count = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, data: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    what = plan(server.count)
                    server.count += 1
                if what == "500":
                    self._send(500, b'{"error": {"message": "overloaded"}}')
                    return
                if what == "garbage":
                    self._send(200, b"<html>502 Bad Gateway</html>", "text/html")
                    return
                text = body["messages"][-1]["content"][-1]["text"]
                answer = Q1 if "current_action" in text else Q2
                msg = {"role": "assistant", "content": json.dumps(answer)}
                reply = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": msg}],
                }
                self._send(200, json.dumps(reply).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[PlannedServer]]:
    monkeypatch.setenv("DD_TEST_KEY", KEY)
    made: list[PlannedServer] = []
    yield made
    for s in made:
        s.httpd.shutdown()


def _cfg(url: str) -> OpenAIConfig:
    return OpenAIConfig(
        base_url=url, model="tiny-vlm", api_key_env="DD_TEST_KEY", concurrency=1, requests_per_s=0,
        max_retries=1, backoff_s=0.0,
    )  # fmt: skip


def test_failed_and_non_json_requests_are_stored_and_the_run_continues(
    servers: list[PlannedServer], tmp_path: Path
) -> None:
    # one worker: sample 0 asks requests 0,1; sample 1 gets 500 twice (2,3: retries exhausted);
    # sample 2 gets an HTML body twice (4,5: retried, then exhausted); samples 3 and 4 ask 6..9
    bad = PlannedServer(lambda n: {2: "500", 3: "500", 4: "garbage", 5: "garbage"}.get(n, "ok"))
    servers.append(bad)
    source = Source(5)
    summary = annotate_store(
        source, registry.build("annotator", "openai", _cfg(bad.url)), tmp_path, chunk_size=5
    )
    assert (summary.done, summary.failed) == (3, 2)
    rows = AnnotationCache(tmp_path).read(summary.key)
    assert len(rows) == 5  # the chunk's finished samples are kept
    failed = {r.token: r.error for r in rows.values() if not r.ok}
    assert set(failed) == {"s1", "s2"}
    assert "2 attempt(s)" in failed["s1"] and "500" in failed["s1"]
    # a re-run skips everything; --retry-failed re-asks exactly the two failures
    good = PlannedServer(lambda n: "ok")
    servers.append(good)
    again = annotate_store(source, registry.build("annotator", "openai", _cfg(good.url)), tmp_path)
    assert (again.done, again.failed, again.cached) == (0, 0, 5) and good.count == 0
    retried = annotate_store(
        source, registry.build("annotator", "openai", _cfg(good.url)), tmp_path, retry_failed=True
    )
    assert (retried.done, retried.failed, retried.cached) == (2, 0, 3) and good.count == 4
    assert all(r.ok for r in AnnotationCache(tmp_path).read(summary.key).values())


def test_cache_key_ignores_the_server_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DD_TEST_KEY", KEY)
    a = registry.build("annotator", "openai", _cfg("http://127.0.0.1:8000/v1"))
    b = registry.build("annotator", "openai", _cfg("http://10.0.0.7:9001/v1"))
    c = registry.build(
        "annotator", "openai", OpenAIConfig(**{**_cfg("http://x/v1").__dict__, "model": "other"})
    )
    assert a.key() == b.key() != c.key()
    assert "base_url" not in json.dumps(a.identity())
