"""Served annotation at scale (#20 pt 5): the OpenAI-compatible annotator against a stub
/v1/chat/completions server on 127.0.0.1 that adds latency and injects failures.

The stub counts how many requests it is serving at once (so the overlap test does not depend on the
machine's speed), identifies a sample by its image, and scripts failures by the order in which distinct
images first arrive (which sample that is depends on thread timing; the counts do not).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from drivedistill import registry
from drivedistill.annotate.cache import AnnotationCache
from drivedistill.annotate.cli import annotate_store
from drivedistill.annotate.openai import OpenAIConfig, retry_after_s
from tests.test_annotate_openai import KEY, Q1, Q2, Source

# script(image arrival index, question "q1"|"q2", attempt) -> "ok" | "429" | "500" | "timeout" | "html" | "401"
Script = Callable[[int, str, int], str]


class StubServer:
    def __init__(self, script: Script, latency_s: float = 0.0, timeout_sleep_s: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.requests = 0
        self.images: dict[str, int] = {}  # image digest -> arrival index
        self.attempts: dict[tuple[str, str], list[float]] = defaultdict(list)  # (image, q) -> arrival times
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, data: bytes, headers: dict[str, str]) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1]["content"]
                image = hashlib.sha256(content[0]["image_url"]["url"].encode()).hexdigest()
                question = "q1" if "current_action" in content[-1]["text"] else "q2"
                with server.lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    index = server.images.setdefault(image, len(server.images))
                    times = server.attempts[(image, question)]
                    times.append(time.monotonic())
                    action = script(index, question, len(times) - 1)
                try:
                    time.sleep(latency_s)
                    self._respond(action, body, question)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _respond(self, action: str, body: dict[str, Any], question: str) -> None:
                json_ct = {"Content-Type": "application/json"}
                if action == "429":
                    self._send(429, b'{"error": {"message": "slow down"}}', {**json_ct, "Retry-After": "0.3"})
                elif action == "500":
                    self._send(500, b'{"error": {"message": "overloaded"}}', json_ct)
                elif action == "401":
                    self._send(401, b'{"error": {"message": "key revoked"}}', json_ct)
                elif action == "html":
                    self._send(200, b"<html>502 Bad Gateway</html>", {"Content-Type": "text/html"})
                elif action == "timeout":
                    time.sleep(timeout_sleep_s)
                    self._send(500, b"{}", json_ct)
                else:
                    answer = Q1 if question == "q1" else Q2
                    reply = {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": json.dumps(answer)},
                            }
                        ],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                    }
                    self._send(200, json.dumps(reply).encode(), json_ct)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def stubs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[StubServer]]:
    monkeypatch.setenv("DD_TEST_KEY", KEY)
    made: list[StubServer] = []
    yield made
    for s in made:
        s.httpd.shutdown()
        s.httpd.server_close()


def _annotator(url: str, **kw: Any) -> Any:
    base: dict[str, Any] = dict(
        base_url=url, model="tiny-vlm", api_key_env="DD_TEST_KEY", requests_per_s=0, backoff_s=0.01
    )
    return registry.build("annotator", "openai", OpenAIConfig(**{**base, **kw}))


def test_requests_overlap_up_to_the_concurrency_and_results_keep_input_order(
    stubs: list[StubServer], tmp_path: Path
) -> None:
    stub = StubServer(lambda i, q, a: "ok", latency_s=0.2)
    stubs.append(stub)
    source = Source(10)
    annotator = _annotator(stub.url, concurrency=4)
    summary = annotate_store(source, annotator, tmp_path, chunk_size=5)
    annotator.close()
    assert stub.max_in_flight == 4  # never more than asked; and the requests did overlap
    assert (summary.done, summary.failed, summary.retries) == (10, 0, 0) and stub.requests == 20
    # shards hold the samples in input order, whatever order the threads finished in
    shards = sorted((tmp_path / summary.key).glob("part-*.parquet"))
    import pyarrow.parquet as pq

    tokens = [t for p in shards for t in pq.read_table(p, columns=["token"]).column("token").to_pylist()]
    assert tokens == source.tokens() and len(shards) == 2
    assert summary.stats["prompt_tokens"] == 20 * 100 and summary.stats["completion_tokens"] == 20 * 20
    assert summary.tokens_per_s is not None and summary.samples_per_s > 0
    assert "samples/s" in summary.line() and "tokens/s" in summary.line()


def test_one_at_a_time_when_concurrency_is_one(stubs: list[StubServer], tmp_path: Path) -> None:
    stub = StubServer(lambda i, q, a: "ok", latency_s=0.05)
    stubs.append(stub)
    annotate_store(Source(4), _annotator(stub.url, concurrency=1), tmp_path)
    assert stub.max_in_flight == 1 and stub.requests == 8


def test_transient_failures_are_retried_and_reported(stubs: list[StubServer], tmp_path: Path) -> None:
    # by arrival order of the images: #0 gets a 429 (Retry-After 0.3 s), #1 a 500, #2 a timeout, #3 an HTML
    # body, each on its first Q1 attempt only; #4 gets 500 on every attempt (retries exhausted → failure)
    first = {0: "429", 1: "500", 2: "timeout", 3: "html"}

    def script(i: int, q: str, attempt: int) -> str:
        if i == 4 and q == "q1":
            return "500"
        return first.get(i, "ok") if (q, attempt) == ("q1", 0) else "ok"

    stub = StubServer(script, timeout_sleep_s=1.5)
    stubs.append(stub)
    annotator = _annotator(stub.url, concurrency=3, max_retries=2, timeout_s=0.6)
    summary = annotate_store(Source(7), annotator, tmp_path)
    annotator.close()
    assert (summary.done, summary.failed) == (6, 1)
    assert summary.retries == 6
    assert {k: v for k, v in summary.stats.items() if k.startswith("retry_")} == {
        "retry_429": 1,
        "retry_5xx": 1 + 2,
        "retry_timeout": 1,
        "retry_bad_body": 1,
    }
    for cause in ("429 1", "5xx 3", "timeout 1", "bad_body 1"):
        assert cause in summary.line()
    failed = [r for r in AnnotationCache(tmp_path).read(summary.key).values() if not r.ok]
    assert len(failed) == 1 and "3 attempt(s)" in failed[0].error and "500" in failed[0].error
    # the 429's retry came no sooner than the server's Retry-After (0.3 s), not after backoff_s (0.01 s)
    image_429 = next(img for img, i in stub.images.items() if i == 0)
    t = stub.attempts[(image_429, "q1")]
    assert len(t) == 2 and t[1] - t[0] >= 0.3 * 0.98


def test_aborted_run_keeps_its_finished_prefix_and_resume_skips_it(
    stubs: list[StubServer], tmp_path: Path
) -> None:
    source = Source(10)
    revoked = StubServer(lambda i, q, a: "401" if i >= 5 else "ok", latency_s=0.02)
    stubs.append(revoked)
    with pytest.raises(RuntimeError, match="AuthenticationError"):
        annotate_store(source, _annotator(revoked.url, concurrency=3), tmp_path, chunk_size=100)
    key = _annotator(revoked.url).key()
    kept = [r.token for r in AnnotationCache(tmp_path).read(key).values()]
    assert 1 <= len(kept) <= 5 and kept == source.tokens()[: len(kept)]  # an in-order prefix, all valid
    good = StubServer(lambda i, q, a: "ok")
    stubs.append(good)
    summary = annotate_store(source, _annotator(good.url, concurrency=3), tmp_path)
    assert (summary.done, summary.cached, summary.failed) == (10 - len(kept), len(kept), 0)
    assert good.requests == 2 * (10 - len(kept))  # finished samples are never asked again
    assert len(AnnotationCache(tmp_path).read(key)) == 10


def test_retry_after_header_forms() -> None:
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after_s({}) is None and retry_after_s(None) is None


def test_bad_concurrency_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="concurrency >= 1"):
        OpenAIConfig(concurrency=0)
