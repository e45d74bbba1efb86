"""OpenAI-compatible VLM annotator: asks Q1 and Q2 about the front image with the future path in red.

Works with any server speaking /v1/chat/completions with image_url content (OpenAI, vLLM, SGLang).
Samples run on a thread pool; all threads share one rate limiter (requests/s). Transient HTTP errors
(429, 5xx, timeouts, connection errors) are retried with exponential back-off (honouring Retry-After);
errors that would fail every sample (401, 403, 400, 404) abort the run. A sample whose request still
fails after every retry, or whose HTTP body is not a chat completion (e.g. a proxy's HTML page), is stored
as a failure with the error and the run goes on (`--retry-failed` re-asks it); so is an answer that is not
valid JSON or does not match the schema, with its raw text. The server's address is not part of the
cache key (moving the server to another host or port re-uses every cached answer).
The API key is read from the environment variable named by `api_key_env` and never logged or hashed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from drivedistill.annotate.base import AnnotationResult, Annotator
from drivedistill.annotate.prompts import question_messages
from drivedistill.annotate.render import png_data_url, render_plan
from drivedistill.annotate.schema import AnswerError, annotation_from_answers
from drivedistill.registry import register
from drivedistill.types import Scene
from drivedistill.world.camera import CameraConfig


@dataclass
class OpenAIConfig:
    base_url: str = "http://127.0.0.1:8000/v1"  # e.g. a local vLLM server, or https://api.openai.com/v1
    model: str = "Qwen/Qwen2.5-VL-3B-Instruct"  # model name as the server knows it
    api_key_env: str = "OPENAI_API_KEY"  # name of the env var holding the key ("EMPTY" for keyless servers)
    temperature: float = 0.0
    max_tokens: int = 300
    image_scale: int = 2  # upscale the camera image before drawing the path (128×256 → 256×512)
    workers: int = 4  # concurrent samples (each sends Q1 then Q2)
    requests_per_s: float = 4.0  # shared rate limit over all workers; 0 = unlimited
    max_retries: int = 5  # per request, for 429 / 5xx / timeouts / connection errors
    backoff_s: float = 1.0  # first back-off; doubles per retry
    backoff_max_s: float = 30.0
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"OpenAIConfig.base_url must start with http:// or https://, got {self.base_url!r}"
            )
        if not self.model:
            raise ValueError("OpenAIConfig.model is empty; set --annotator.model=NAME (as served)")
        if self.workers < 1 or self.max_retries < 0 or self.requests_per_s < 0 or self.image_scale < 1:
            raise ValueError(
                "OpenAIConfig: need workers >= 1, max_retries >= 0, requests_per_s >= 0, image_scale >= 1"
            )


class RequestFailed(RuntimeError):
    """One sample's request failed for good (retries exhausted, or an unreadable response): the sample is
    stored as a failure and the run continues."""


class RateLimiter:
    """At most `rate` acquisitions per second across threads (evenly spaced); rate 0 = no limit."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(self._next, now) + self.interval
        if wait > 0:
            time.sleep(wait)


class OpenAIAnnotator(Annotator):
    """Annotates through an OpenAI-compatible chat endpoint."""

    name = "openai"
    throughput_fields = (
        "base_url",  # where the model is served, not what answers: moving the server keeps the cache
        "api_key_env",
        "workers",
        "requests_per_s",
        "max_retries",
        "backoff_s",
        "backoff_max_s",
        "timeout_s",
    )

    def __init__(self, cfg: OpenAIConfig, camera: CameraConfig | None = None) -> None:
        import openai

        super().__init__(cfg)
        self.cfg: OpenAIConfig = cfg
        self.camera = camera
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise RuntimeError(
                f"openai annotator: environment variable {cfg.api_key_env} is not set; export it with your API "
                f"key (any value such as EMPTY for a server without authentication), or name another variable "
                "with --annotator.api_key_env=NAME"
            )
        self._openai = openai
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=key, max_retries=0, timeout=cfg.timeout_s)
        self.limiter = RateLimiter(cfg.requests_per_s)
        self.retries = 0  # transient errors retried so far (all threads)
        self._count_lock = threading.Lock()

    def _retryable(self, err: Exception) -> bool:
        o = self._openai
        if isinstance(err, o.APIConnectionError | o.APITimeoutError | o.RateLimitError):
            return True
        return isinstance(err, o.APIStatusError) and err.status_code >= 500

    def _fatal(self, err: Exception) -> bool:
        """Errors every later request would hit too (credentials, model name, endpoint, request shape)."""
        o = self._openai
        return isinstance(
            err, o.AuthenticationError | o.PermissionDeniedError | o.NotFoundError | o.BadRequestError
        )

    def _delay(self, err: Exception, attempt: int) -> float:
        retry_after = None
        response = getattr(err, "response", None)
        if response is not None:
            try:
                retry_after = float(response.headers.get("retry-after", ""))
            except ValueError:
                retry_after = None
        backoff = min(self.cfg.backoff_s * 2**attempt, self.cfg.backoff_max_s)
        return backoff if retry_after is None else min(max(retry_after, 0.0), self.cfg.backoff_max_s)

    def ask(self, messages: list[dict[str, Any]]) -> str:
        """One chat completion with retries; returns the answer text ('' when the server sent none)."""
        for attempt in range(self.cfg.max_retries + 1):
            self.limiter.acquire()
            try:
                resp = self.client.chat.completions.create(
                    model=self.cfg.model,
                    messages=messages,  # type: ignore[arg-type]
                    temperature=self.cfg.temperature,
                    max_tokens=self.cfg.max_tokens,
                )
                return (resp.choices[0].message.content or "") if resp.choices else ""
            except Exception as err:
                if not self._retryable(err) or attempt == self.cfg.max_retries:
                    message = (
                        f"openai annotator: request to {self.cfg.base_url} (model {self.cfg.model}) failed after "
                        f"{attempt + 1} attempt(s): {type(err).__name__}: {err}"
                    )
                    raise (RuntimeError if self._fatal(err) else RequestFailed)(message) from None
                with self._count_lock:
                    self.retries += 1
                time.sleep(self._delay(err, attempt))
        raise AssertionError("unreachable")

    def annotate_one(self, scene: Scene, sample_hash: str) -> AnnotationResult:
        url = png_data_url(render_plan(scene, self.camera, scale=self.cfg.image_scale))
        q1 = ""
        try:
            q1 = self.ask(question_messages("q1", scene, url))
            q2 = self.ask(question_messages("q2", scene, url))
        except RequestFailed as e:
            return AnnotationResult(scene.token, sample_hash, None, f"Q1: {q1}" if q1 else "", str(e))
        raw = f"Q1: {q1}\nQ2: {q2}"
        try:
            return AnnotationResult(scene.token, sample_hash, annotation_from_answers(q1, q2), raw)
        except AnswerError as e:
            return AnnotationResult(scene.token, sample_hash, None, raw, str(e))

    def annotate(self, items: Sequence[tuple[Scene, str]]) -> list[AnnotationResult]:
        with ThreadPoolExecutor(max_workers=self.cfg.workers) as pool:
            return list(pool.map(lambda it: self.annotate_one(*it), items))

    def close(self) -> None:
        self.client.close()


@register("annotator", "openai", OpenAIConfig)
def build(cfg: OpenAIConfig, camera: CameraConfig | None = None) -> OpenAIAnnotator:
    return OpenAIAnnotator(cfg, camera)
