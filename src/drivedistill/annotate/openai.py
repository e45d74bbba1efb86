"""OpenAI-compatible VLM annotator: asks Q1 and Q2 about the front image with the future path in red.

Works with any server speaking /v1/chat/completions with image_url content (OpenAI, vLLM, SGLang).
`concurrency` samples are in flight at once (each sends Q1 then Q2, so at most `concurrency` requests);
results come back in input order whatever order the server answers in, and all threads share one rate
limiter (requests/s). Transient errors (429, 5xx, timeouts, connection errors, a 200 whose body is not a
chat completion, e.g. a proxy's HTML page) are retried with exponential back-off and jitter, honouring
Retry-After / retry-after-ms; errors that would fail every sample (401, 403, 400, 404) abort the run. A
sample whose request still fails after every retry is stored as a failure with the error and the run goes
on (`--retry-failed` re-asks it); so is an answer that is not valid JSON or does not match the schema,
with its raw text. `stats()` gives requests, retries by cause and the token usage the server reported.
The server's address is not part of the cache key (moving the server re-uses every cached answer).
The API key is read from the environment variable named by `api_key_env` and never logged or hashed.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from drivedistill.annotate.base import AnnotationResult, Annotator
from drivedistill.annotate.prompts import question_messages
from drivedistill.annotate.render import png_data_url, render_plan
from drivedistill.annotate.schema import AnswerError, annotation_from_answers
from drivedistill.config import check
from drivedistill.registry import register
from drivedistill.types import Scene
from drivedistill.world.camera import CameraConfig


@dataclass
class OpenAIConfig:
    base_url: str = "http://127.0.0.1:8000/v1"  # e.g. a local vLLM server, or https://api.openai.com/v1
    model: str = "Qwen/Qwen2.5-VL-3B-Instruct"  # model name as the server knows it
    api_key_env: str = "OPENAI_API_KEY"  # name of the env var holding the key ("EMPTY" for keyless servers)
    temperature: float = field(default=0.0, metadata=check(ge=0, le=2))
    max_tokens: int = field(default=300, metadata=check(ge=1))
    # upscale the camera image before drawing the path (128×256 → 256×512)
    image_scale: int = field(default=2, metadata=check(ge=1))
    # samples (= requests) in flight at once; each sample sends Q1 then Q2
    concurrency: int = field(default=8, metadata=check(ge=1))
    # shared rate limit over all threads; 0 = unlimited
    requests_per_s: float = field(default=0.0, metadata=check(ge=0))
    # per request, for 429 / 5xx / timeouts / connection errors / unreadable bodies
    max_retries: int = field(default=5, metadata=check(ge=0))
    # first back-off; doubles per retry, each multiplied by a jitter in [0.5, 1)
    backoff_s: float = field(default=1.0, metadata=check(ge=0))
    # cap of one back-off (also caps a server's Retry-After)
    backoff_max_s: float = field(default=30.0, metadata=check(ge=0))
    timeout_s: float = field(default=120.0, metadata=check(gt=0))  # per request

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"OpenAIConfig.base_url must start with http:// or https://, got {self.base_url!r}"
            )
        if not self.model:
            raise ValueError("OpenAIConfig.model is empty; set --annotator.model=NAME (as served)")
        if self.concurrency < 1 or self.max_retries < 0 or self.requests_per_s < 0 or self.image_scale < 1:
            raise ValueError(
                "OpenAIConfig: need concurrency >= 1, max_retries >= 0, requests_per_s >= 0, image_scale >= 1 "
                f"(got {self.concurrency}, {self.max_retries}, {self.requests_per_s}, {self.image_scale})"
            )
        if self.backoff_s < 0 or self.backoff_max_s < 0 or self.timeout_s <= 0:
            raise ValueError("OpenAIConfig: need backoff_s >= 0, backoff_max_s >= 0 and timeout_s > 0")


class RequestFailed(RuntimeError):
    """One sample's request failed for good (retries exhausted): the sample is stored as a failure and
    the run continues."""


class BadBody(RuntimeError):
    """The server answered 200 with something that is not a chat completion (retried like a 5xx)."""


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


def retry_after_s(headers: Any) -> float | None:
    """Seconds a server asks to wait (`retry-after-ms`, else `retry-after` in seconds), or None.

    The HTTP-date form of Retry-After is not parsed (None: the exponential back-off applies)."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(float(value) * scale, 0.0)
        except ValueError:
            continue
    return None


class OpenAIAnnotator(Annotator):
    """Annotates through an OpenAI-compatible chat endpoint."""

    name = "openai"
    throughput_fields = (
        "base_url",  # where the model is served, not what answers: moving the server keeps the cache
        "api_key_env",
        "concurrency",
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
        # one client shared by the threads (its connection pool allows far more than `concurrency`)
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=key, max_retries=0, timeout=cfg.timeout_s)
        self.limiter = RateLimiter(cfg.requests_per_s)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()  # requests, retries and their causes, token usage
        self._rng = random.Random()  # jitter only: never affects answers

    @property
    def retries(self) -> int:
        """Transient request errors retried so far (all threads)."""
        return self._counts["retries"]

    def stats(self) -> dict[str, int]:
        """Counters so far: requests, retries, retry causes (`retry_429`, `retry_5xx`, `retry_timeout`,
        `retry_connection`, `retry_bad_body`), `prompt_tokens` / `completion_tokens` (0 when the server
        reports no usage)."""
        with self._lock:
            return dict(self._counts)

    def _count(self, **inc: int) -> None:
        with self._lock:
            self._counts.update(inc)

    def _cause(self, err: Exception) -> str | None:
        """Retry-counter name for a transient error, None when the error is not worth retrying."""
        o = self._openai
        if isinstance(err, BadBody):
            return "retry_bad_body"
        if isinstance(err, o.APITimeoutError):  # (a subclass of APIConnectionError: test it first)
            return "retry_timeout"
        if isinstance(err, o.APIConnectionError):
            return "retry_connection"
        if isinstance(err, o.RateLimitError):
            return "retry_429"
        if isinstance(err, o.APIStatusError) and err.status_code >= 500:
            return "retry_5xx"
        if isinstance(err, o.APIResponseValidationError):
            return "retry_bad_body"
        return None

    def _fatal(self, err: Exception) -> bool:
        """Errors every later request would hit too (credentials, model name, endpoint, request shape)."""
        o = self._openai
        return isinstance(
            err, o.AuthenticationError | o.PermissionDeniedError | o.NotFoundError | o.BadRequestError
        )

    def _delay(self, err: Exception, attempt: int) -> float:
        """Seconds to wait before retry `attempt + 1`: the server's Retry-After when it sends one, else
        backoff_s · 2^attempt; times a jitter in [0.5, 1) (so threads hit by the same 429 burst spread out),
        capped at backoff_max_s."""
        asked = retry_after_s(getattr(getattr(err, "response", None), "headers", None))
        with self._lock:
            jitter = 0.5 + 0.5 * self._rng.random()
        if asked is not None:
            return min(asked + self.cfg.backoff_s * (jitter - 0.5), self.cfg.backoff_max_s)
        return min(self.cfg.backoff_s * 2**attempt * jitter, self.cfg.backoff_max_s)

    def _create(self, messages: list[dict[str, Any]]) -> str:
        resp: Any = self.client.chat.completions.create(
            model=self.cfg.model,
            messages=messages,  # type: ignore[arg-type]
            temperature=self.cfg.temperature,
            max_tokens=self.cfg.max_tokens,
        )
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list):
            text = resp if isinstance(resp, str) else type(resp).__name__
            raise BadBody(f"response body is not a chat completion: {text[:80]!r}")
        usage = getattr(resp, "usage", None)
        if usage is not None:
            self._count(
                prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            )
        return (choices[0].message.content or "") if choices else ""

    def ask(self, messages: list[dict[str, Any]]) -> str:
        """One chat completion with retries; returns the answer text ('' when the server sent none)."""
        for attempt in range(self.cfg.max_retries + 1):
            self.limiter.acquire()
            self._count(requests=1)
            try:
                return self._create(messages)
            except Exception as err:
                cause = self._cause(err)
                if cause is None or attempt == self.cfg.max_retries:
                    message = (
                        f"openai annotator: request to {self.cfg.base_url} (model {self.cfg.model}) failed after "
                        f"{attempt + 1} attempt(s): {type(err).__name__}: {err}"
                    )
                    if self._fatal(err):
                        raise RuntimeError(message) from None
                    if cause is None and not isinstance(err, self._openai.APIError):
                        raise  # a bug on our side, not the server's answer
                    raise RequestFailed(message) from None
                self._count(retries=1, **{cause: 1})
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

    def annotate_iter(self, items: Iterable[tuple[Scene, str]]) -> Iterator[AnnotationResult]:
        """Results in input order while `concurrency` samples run at once. At most 4 × concurrency samples
        are pending (rendered images in memory), so a slow head-of-line sample stalls the stream only
        after the others have run that far ahead. On an exception (fatal server error, interrupt) the
        not-yet-started samples are cancelled and the exception propagates after the running ones end."""
        pool = ThreadPoolExecutor(self.cfg.concurrency, thread_name_prefix="openai-annotator")
        pending: deque[Future[AnnotationResult]] = deque()
        try:
            for scene, sample_hash in items:
                pending.append(pool.submit(self.annotate_one, scene, sample_hash))
                while len(pending) >= 4 * self.cfg.concurrency or (pending and pending[0].done()):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def annotate(self, items: Sequence[tuple[Scene, str]]) -> list[AnnotationResult]:
        return list(self.annotate_iter(items))

    def close(self) -> None:
        self.client.close()


@register("annotator", "openai", OpenAIConfig)
def build(cfg: OpenAIConfig, camera: CameraConfig | None = None) -> OpenAIAnnotator:
    return OpenAIAnnotator(cfg, camera)
