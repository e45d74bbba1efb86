"""OpenAI-compatible annotator against a local /v1/chat/completions server started in the test.

The server answers Q1/Q2 with valid JSON, except: the very first request gets a 429 (retried with
back-off), and one Q1 request gets a malformed answer (stored as a failure with its raw text).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from drivedistill import registry
from drivedistill.annotate.cache import AnnotationCache
from drivedistill.annotate.cli import annotate_store
from drivedistill.annotate.openai import OpenAIConfig, RateLimiter
from drivedistill.testing import random_scene
from drivedistill.types import Scene

KEY = "sk-test-secret-123"
Q1 = {
    "current_action": "Driving at 30 km/h.",
    "next_action": "Keep the lane.",
    "reasoning": "The road is clear.",
}
Q2 = {"control": "go straight", "turn": "none", "lane": "keep"}


class FakeServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.sent_429 = self.sent_malformed = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if (
                    self.path != "/v1/chat/completions"
                    or self.headers.get("Authorization") != f"Bearer {KEY}"
                ):
                    self._send(401, {"error": {"message": "bad key or path"}})
                    return
                with server.lock:
                    server.requests.append(body)
                    first_429 = not server.sent_429
                    server.sent_429 = True
                    text = body["messages"][-1]["content"][-1]["text"]
                    malformed = "current_action" in text and not server.sent_malformed and not first_429
                    server.sent_malformed |= malformed
                if first_429:
                    self._send(429, {"error": {"message": "slow down"}}, {"retry-after": "0"})
                    return
                answer = Q1 if "current_action" in text else Q2
                content = (
                    "I cannot see the road {oops" if malformed else "```json\n" + json.dumps(answer) + "\n```"
                )
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": content},
                            }
                        ],
                    },
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    monkeypatch.setenv("DD_TEST_KEY", KEY)
    srv = FakeServer()
    yield srv
    srv.httpd.shutdown()


class Source:
    def __init__(self, n: int) -> None:
        self.scenes = {f"s{i}": random_scene(i, camera_hw=(128, 256), token=f"s{i}") for i in range(n)}

    def tokens(self, split: str | None = None) -> list[str]:
        return list(self.scenes)

    def load(self, token: str, with_privileged: bool = True) -> Scene:
        return self.scenes[token]

    def sample_hash(self, token: str) -> str:
        return "h" + token


def test_annotates_retries_429_and_stores_malformed_answer(server: FakeServer, tmp_path: Path) -> None:
    cfg = OpenAIConfig(
        base_url=server.url,
        model="tiny-vlm",
        api_key_env="DD_TEST_KEY",
        concurrency=3,
        requests_per_s=0,
        backoff_s=0.01,
    )
    annotator = registry.build("annotator", "openai", cfg)
    summary = annotate_store(Source(5), annotator, tmp_path, chunk_size=5)
    assert (summary.done, summary.failed, summary.retries) == (4, 1, 1)
    assert len(server.requests) == 5 * 2 + 1
    content = server.requests[0]["messages"][-1]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert server.requests[0]["model"] == "tiny-vlm"
    rows = AnnotationCache(tmp_path).read(summary.key)
    failed = [r for r in rows.values() if not r.ok]
    assert len(failed) == 1 and "{oops" in failed[0].raw and failed[0].error
    ok = next(r for r in rows.values() if r.ok)
    assert ok.annotation is not None and ok.annotation.reasoning == Q1["reasoning"]
    for path in tmp_path.rglob("*"):  # the key is never written anywhere
        assert not path.is_file() or KEY.encode() not in path.read_bytes()
    assert KEY not in json.dumps(annotator.identity())


def test_auth_error_aborts_instead_of_storing_failures(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DD_TEST_KEY", "wrong")
    cfg = OpenAIConfig(base_url=server.url, api_key_env="DD_TEST_KEY", backoff_s=0.01)
    annotator = registry.build("annotator", "openai", cfg)
    with pytest.raises(RuntimeError, match="AuthenticationError") as err:
        annotator.annotate(list(zip(Source(1).scenes.values(), ["h"])))
    assert "wrong" not in str(err.value)


def test_missing_key_env_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DD_NO_SUCH_KEY", raising=False)
    with pytest.raises(RuntimeError, match="DD_NO_SUCH_KEY"):
        registry.build("annotator", "openai", OpenAIConfig(api_key_env="DD_NO_SUCH_KEY"))


def test_rate_limiter_spaces_requests() -> None:
    limiter = RateLimiter(50.0)
    start = time.monotonic()
    threads = [threading.Thread(target=limiter.acquire) for _ in range(11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start >= 10 / 50.0 * 0.95
