"""Stage artifacts keyed by content hash.

Each stage writes into `<run>/stages/<name>-<hash>/`, where the hash covers the stage's own config and
the hashes of the artifacts it reads. A finished stage leaves `_done.json` (written atomically, last):
a second run skips it; changing a knob changes the hash of that stage and of everything downstream,
so only those re-run. An interrupted stage has no `_done.json` and re-runs in the same directory, where
its own resume logic (complete shards, training checkpoints) picks up what was finished.

A dry run (`StageRunner(..., dry_run=True)`) computes the same keys and runs nothing: it lists the
stages that would run, each with what a stage of the same name cost the last time it ran in this run
directory (under another key). A stage downstream of one that would run has a new key too, so it is
listed even where its key could not be computed exactly (its inputs' summaries do not exist yet).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivedistill.config import config_hash
from drivedistill.utils.io import atomic_write_json
from drivedistill.utils.runtime import hardware

DONE = "_done.json"


@dataclass(frozen=True)
class Artifact:
    """A finished stage output: its directory, hash and the summary the stage returned."""

    name: str
    key: str
    path: Path
    summary: dict[str, Any]
    cached: bool

    def store_dir(self) -> Path:
        """The scene store a collect stage wrote: its summary names it relative to the stage directory,
        so a run directory can be moved or copied (absolute / CWD-relative paths of older runs work too)."""
        path = Path(self.summary["store"])
        return path if path.is_absolute() or not (self.path / path).exists() else self.path / path


class StageRunner:
    """Runs named stages once per content hash inside a run directory."""

    def __init__(
        self,
        run_dir: Path,
        total: int = 0,
        log: Callable[[str], None] = print,
        dry_run: bool = False,
        device: str = "auto",
    ) -> None:
        self.run_dir = Path(run_dir)
        self.stage_root = self.run_dir / "stages"
        if not dry_run:
            self.stage_root.mkdir(parents=True, exist_ok=True)
        # how paths into the stages may be spelt in a stage config (resolved and as given)
        self._roots = tuple(dict.fromkeys((str(self.stage_root.resolve()), str(self.stage_root))))
        self.log = log
        self.timings: dict[str, float] = {}  # seconds of the stages that ran in this invocation
        # seconds of every stage of the run when it ran, now or in an earlier invocation (from _done.json):
        # their sum is what the whole run costs, however often it was interrupted or extended
        self.recorded: dict[str, float] = {}
        self.total = total  # planned stages, for the overall progress line
        self.count = 0
        self.start = time.perf_counter()
        self.work_seconds = 0.0  # time spent in stages that actually ran
        self.ran = 0
        self.dry_run = dry_run
        self.device = device  # the study's device, for the hardware stamp
        self.hardware: dict[str, dict[str, Any]] = {}  # stage → hardware stamp of the run that made it
        # dry run: stage name → seconds its last run under another key took (None: never ran here)
        self.planned: dict[str, float | None] = {}

    @staticmethod
    def key_of(*parts: Any) -> str:
        return config_hash(*parts)

    def _progress(self, name: str, key: str, status: str) -> str:
        elapsed = time.perf_counter() - self.start
        eta = ""
        if self.ran and self.total:
            # naive: the remaining stages cost as much as the average stage that ran so far
            remaining = max(self.total - self.count, 0) * self.work_seconds / self.ran
            eta = f" · ETA ~{remaining / 60:.1f} min"
        of = f"/{self.total}" if self.total else ""
        return f"[{self.count}{of}] {status} {name} ({key}) · elapsed {elapsed / 60:.1f} min{eta}"

    def key(self, name: str, cfg: Any, inputs: list[Artifact]) -> str:
        """Hash of the stage's config and its inputs' keys. Paths into this run's stages (e.g. a student
        starting from a recipe artifact) enter as `<stages>/…`: the input keys already pin their content,
        and the key must not change when the run directory is moved or named differently."""
        return config_hash({"stage": name, "cfg": self._portable(cfg), "inputs": [a.key for a in inputs]})

    def _portable(self, node: Any) -> Any:
        if isinstance(node, dict):
            return {k: self._portable(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [self._portable(v) for v in node]
        if isinstance(node, str):
            for root in self._roots:
                if node == root or node.startswith(root + os.sep):
                    return "<stages>" + node[len(root) :]
        return node

    def previous_seconds(self, name: str) -> float | None:
        """Seconds the most recently finished stage called `name` (any key) took in this run directory."""
        done = [
            p / DONE
            for p in self.stage_root.glob(f"{name}-*")
            if "-" not in p.name[len(name) + 1 :] and (p / DONE).exists()  # not `{name}-variant-…`
        ]
        if not done:
            return None
        latest = max(done, key=lambda p: p.stat().st_mtime)
        return float(json.loads(latest.read_text()).get("seconds", 0.0))

    def run(
        self,
        name: str,
        cfg: Any,
        inputs: list[Artifact],
        fn: Callable[[Path], dict[str, Any]],
        label: str | None = None,
    ) -> Artifact:
        """Run `fn(stage_dir) -> summary` unless an identical stage already finished. The directory and
        key come from `name`; `label` (default: `name`) names the stage in logs, timings and the plan
        (two stages of one name with different keys, e.g. a control's teacher, need two labels)."""
        key = self.key(name, cfg, inputs)
        path = self.stage_root / f"{name}-{key}"
        done = path / DONE
        self.count += 1
        shown = name
        name = label or name
        if done.exists():
            record = json.loads(done.read_text())
            summary = record["summary"]
            self.recorded[name] = float(record.get("seconds", 0.0))
            if "hardware" in record:
                self.hardware[name] = record["hardware"]
            self.log(self._progress(name, key, "skip (done)"))
            return Artifact(name, key, path, summary, cached=True)
        if self.dry_run:
            self.planned[name] = self.previous_seconds(shown)
            self.log(self._progress(name, key, "would run"))
            return Artifact(name, key, path, {}, cached=False)
        path.mkdir(parents=True, exist_ok=True)
        self.log(self._progress(name, key, "run"))
        t0 = time.perf_counter()
        summary = fn(path)
        seconds = time.perf_counter() - t0
        self.work_seconds += seconds
        self.ran += 1
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        self.recorded[name] = seconds
        stamp = hardware(self.device)
        self.hardware[name] = stamp
        atomic_write_json(
            done,
            {
                "stage": name,
                "key": key,
                "inputs": [a.key for a in inputs],
                "seconds": seconds,
                "hardware": stamp,  # where it ran: CPU model, threads, torch, device
                "summary": summary,
            },
        )
        return Artifact(name, key, path, summary, cached=False)
