"""Where independent tasks run: in this process, a local process pool, or Ray tasks on a cluster.

    ex = make_executor(ExecutorConfig(kind="ray", address="auto"))     # or kind="local", workers=4
    for out in ex.imap(fn, items):          # TaskOutcome per item, in input order, as soon as its turn is done
        ... out.value / out.error / out.attempts
    values = ex.map(fn, items)              # every value, or TaskFailures naming each failed item

`fn` must be a module-level function and `items` picklable (they cross process / node boundaries; the
local pool uses the spawn start method). A task that raises is resubmitted up to `retries` times; one
that still fails is reported as a `TaskOutcome` with its error (never dropped), and `map` raises
`TaskFailures` listing every failed item after the others have finished. Ray (`pip install
'drivedistill[dist]'`) connects to `address`, else to `$RAY_ADDRESS`, else starts a local Ray with
`num_cpus` CPUs (0 = all). Results do not depend on the executor: the same `fn` on the same item gives
the same value wherever it runs, and outcomes come back in input order.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from drivedistill.config import check

T = TypeVar("T")
R = TypeVar("R")

KINDS = ("local", "ray")


@dataclass
class ExecutorConfig:
    kind: str = "local"  # local | ray
    # local: processes (1 = run in this process); ray: tasks in flight (0 = 2 × cluster CPUs)
    workers: int = field(default=1, metadata=check(ge=0))
    # extra attempts of a task that raised (or whose worker died)
    retries: int = field(default=2, metadata=check(ge=0))
    address: str = ""  # ray: cluster address ("auto", "ray://host:10001"); "" = $RAY_ADDRESS or a local Ray
    # ray, local Ray only: CPUs it may use (0 = all of this machine)
    num_cpus: int = field(default=0, metadata=check(ge=0))

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"executor kind {self.kind!r} is unknown; use one of {list(KINDS)} (--executor)")
        if self.workers < 0 or self.retries < 0 or self.num_cpus < 0:
            raise ValueError(
                f"ExecutorConfig: need workers >= 0, retries >= 0, num_cpus >= 0 "
                f"(got {self.workers}, {self.retries}, {self.num_cpus})"
            )
        if self.kind == "local" and self.workers < 1:
            raise ValueError("ExecutorConfig: the local executor needs workers >= 1")


@dataclass(frozen=True)
class TaskOutcome(Generic[R]):
    """The result of item `index`: `value` when it succeeded, else `error` (the last attempt's)."""

    index: int
    value: R | None
    error: str = ""
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return not self.error


class TaskFailures(RuntimeError):
    """Some tasks failed after every retry; `.failures` holds their outcomes (the others succeeded)."""

    def __init__(self, what: str, failures: Sequence[TaskOutcome[Any]]) -> None:
        self.failures = list(failures)
        lines = [f"  item {f.index} after {f.attempts} attempt(s): {f.error}" for f in failures[:10]]
        more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
        super().__init__(f"{what}: {len(failures)} task(s) failed:\n" + "\n".join(lines) + more)


def _describe(err: BaseException) -> str:
    last = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(err).__name__}: {err}{where}".strip()


class Executor:
    """Base: subclasses provide `_submit`, `_wait` and `_result`; `imap` adds ordering and retries."""

    kind = ""

    def __init__(self, cfg: ExecutorConfig) -> None:
        self.cfg = cfg
        self.retried = 0  # task attempts that failed and were resubmitted

    def in_flight(self) -> int:
        """How many tasks to keep submitted at once."""
        return max(self.cfg.workers, 1)

    def _submit(self, fn: Callable[[T], R], item: T) -> Any:
        raise NotImplementedError

    def _wait(self, handles: list[Any]) -> list[Any]:
        """Block until at least one handle is done; return the done ones."""
        raise NotImplementedError

    def _result(self, handle: Any) -> Any:
        """The task's value; raises what the task raised."""
        raise NotImplementedError

    def imap(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[TaskOutcome[R]]:
        """Outcomes in input order; at most `in_flight()` tasks run at once."""
        todo = list(enumerate(items))
        todo.reverse()  # pop() from the end = input order
        running: dict[Any, tuple[int, T, int]] = {}  # handle -> (index, item, attempt)
        ready: dict[int, TaskOutcome[R]] = {}
        next_out = 0
        try:
            while todo or running:
                while todo and len(running) < self.in_flight():
                    index, item = todo.pop()
                    running[self._submit(fn, item)] = (index, item, 1)
                for handle in self._wait(list(running)):
                    index, item, attempt = running.pop(handle)
                    try:
                        ready[index] = TaskOutcome(index, self._result(handle), "", attempt)
                    except Exception as err:  # a task's failure is retried, then reported
                        if attempt <= self.cfg.retries:
                            self.retried += 1
                            running[self._submit(fn, item)] = (index, item, attempt + 1)
                        else:
                            ready[index] = TaskOutcome(index, None, _describe(err), attempt)
                while next_out in ready:
                    yield ready.pop(next_out)
                    next_out += 1
        finally:
            self._cancel(list(running))

    def map(self, fn: Callable[[T], R], items: Iterable[T], what: str = "executor") -> list[R]:
        """Every task's value in input order; raises `TaskFailures` (after all tasks ran) if any failed."""
        outcomes = list(self.imap(fn, items))
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise TaskFailures(what, failed)
        return [o.value for o in outcomes]  # type: ignore[misc]

    def _cancel(self, handles: list[Any]) -> None:
        """Give up on tasks still running (after an exception in the caller)."""

    def close(self) -> None:
        """Release workers (the local pool); Ray stays connected for the rest of the process."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlineExecutor(Executor):
    """Runs each task in this process when asked for its result (local executor with workers=1)."""

    kind = "local"

    def _submit(self, fn: Callable[[T], R], item: T) -> Any:
        return _Call(fn, item)

    def _wait(self, handles: list[Any]) -> list[Any]:
        return handles[:1]

    def _result(self, handle: Any) -> Any:
        return handle.fn(handle.item)


class _Call:
    """A deferred call (hashed by identity: items need not be hashable)."""

    def __init__(self, fn: Callable[[Any], Any], item: Any) -> None:
        self.fn, self.item = fn, item


class LocalExecutor(Executor):
    """A spawn-safe process pool of `workers` processes on this machine."""

    kind = "local"

    def __init__(self, cfg: ExecutorConfig) -> None:
        super().__init__(cfg)
        self.pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(self.cfg.workers, mp_context=multiprocessing.get_context("spawn"))

    def _submit(self, fn: Callable[[T], R], item: T) -> Any:
        try:
            return self.pool.submit(fn, item)
        except cf.process.BrokenProcessPool:  # a worker died (its tasks failed and are being retried)
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()
            return self.pool.submit(fn, item)

    def _wait(self, handles: list[Any]) -> list[Any]:
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        return [h for h in handles if h in done]  # submission order: deterministic retries

    def _result(self, handle: Any) -> Any:
        return handle.result()

    def _cancel(self, handles: list[Any]) -> None:
        for h in handles:
            h.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor(Executor):
    """Ray tasks (one CPU each) on the cluster at `address` / $RAY_ADDRESS, or on a local Ray."""

    kind = "ray"

    def __init__(self, cfg: ExecutorConfig) -> None:
        super().__init__(cfg)
        try:
            import ray
        except ImportError:
            raise RuntimeError(
                "--executor ray needs Ray: pip install 'drivedistill[dist]' (or pip install 'ray>=2.9')"
            ) from None
        self.ray = ray
        if not ray.is_initialized():
            address = cfg.address or os.environ.get("RAY_ADDRESS") or None
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None and cfg.num_cpus:
                kwargs["num_cpus"] = cfg.num_cpus
            if os.environ.get("PYTHONPATH"):  # the workers import drivedistill from where this process does
                kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}}
            ray.init(address=address, **kwargs)
        self._remote: dict[Any, Any] = {}

    def in_flight(self) -> int:
        if self.cfg.workers:
            return self.cfg.workers
        return max(2 * int(self.ray.cluster_resources().get("CPU", 1)), 1)

    def _submit(self, fn: Callable[[T], R], item: T) -> Any:
        remote = self._remote.get(fn)
        if remote is None:  # max_retries=0: retries (of crashes too) are counted and reported by imap
            remote = self._remote[fn] = self.ray.remote(num_cpus=1, max_retries=0)(fn)
        return remote.remote(item)

    def _wait(self, handles: list[Any]) -> list[Any]:
        done, _ = self.ray.wait(handles, num_returns=1)
        return list(done)

    def _result(self, handle: Any) -> Any:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayTaskError as err:  # re-raise the task's own exception
            cause = err.as_instanceof_cause()
            raise cause from None

    def _cancel(self, handles: list[Any]) -> None:
        for h in handles:
            self.ray.cancel(h, force=True)


def make_executor(cfg: ExecutorConfig | None = None) -> Executor:
    """The executor `cfg` asks for (default: inline, in this process)."""
    cfg = cfg or ExecutorConfig()
    if cfg.kind == "ray":
        return RayExecutor(cfg)
    return InlineExecutor(cfg) if cfg.workers == 1 else LocalExecutor(cfg)


def add_executor_args(parser: Any, workers: bool = True) -> None:
    """--executor, --workers (unless the parser has its own), --retries, --ray-address, --ray-num-cpus."""
    parser.add_argument("--executor", choices=KINDS, default="local", help="where tasks run (default local)")
    if workers:
        parser.add_argument(
            "--workers",
            type=int,
            default=None,
            help="local: processes (1 = in-process); ray: tasks in flight",
        )
    parser.add_argument("--retries", type=int, default=2, help="extra attempts of a failing task")
    parser.add_argument(
        "--ray-address", default="", help="Ray cluster address (default: $RAY_ADDRESS or local)"
    )
    parser.add_argument("--ray-num-cpus", type=int, default=0, help="CPUs of a local Ray (0 = all)")


def executor_config(args: Any) -> ExecutorConfig:
    """ExecutorConfig from the arguments `add_executor_args` added."""
    workers = args.workers if args.workers is not None else (1 if args.executor == "local" else 0)
    return ExecutorConfig(args.executor, workers, args.retries, args.ray_address, args.ray_num_cpus)
