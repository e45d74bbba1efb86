"""Stage artifacts keyed by content hash.

Each stage writes into `<run>/stages/<name>-<hash>/`, where the hash covers the stage's own config and
the hashes of the artifacts it reads. A finished stage leaves `_done.json` (written atomically, last):
a second run skips it; changing a knob changes the hash of that stage and of everything downstream,
so only those re-run. An interrupted stage has no `_done.json` and re-runs in the same directory, where
its own resume logic (complete shards, training checkpoints) picks up what was finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivedistill.config import config_hash
from drivedistill.utils.io import atomic_write_json

DONE = "_done.json"


@dataclass(frozen=True)
class Artifact:
    """A finished stage output: its directory, hash and the summary the stage returned."""

    name: str
    key: str
    path: Path
    summary: dict[str, Any]
    cached: bool


class StageRunner:
    """Runs named stages once per content hash inside a run directory."""

    def __init__(self, run_dir: Path, log: Callable[[str], None] = print) -> None:
        self.run_dir = Path(run_dir)
        self.stage_root = self.run_dir / "stages"
        self.stage_root.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.timings: dict[str, float] = {}

    def key(self, name: str, cfg: Any, inputs: list[Artifact]) -> str:
        return config_hash({"stage": name, "cfg": cfg, "inputs": [a.key for a in inputs]})

    def run(
        self,
        name: str,
        cfg: Any,
        inputs: list[Artifact],
        fn: Callable[[Path], dict[str, Any]],
    ) -> Artifact:
        """Run `fn(stage_dir) -> summary` unless an identical stage already finished."""
        key = self.key(name, cfg, inputs)
        path = self.stage_root / f"{name}-{key}"
        done = path / DONE
        if done.exists():
            summary = json.loads(done.read_text())["summary"]
            self.log(f"[skip] {name} ({key}) — already done")
            return Artifact(name, key, path, summary, cached=True)
        path.mkdir(parents=True, exist_ok=True)
        self.log(f"[run ] {name} ({key})")
        t0 = time.perf_counter()
        summary = fn(path)
        seconds = time.perf_counter() - t0
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        atomic_write_json(
            done,
            {"stage": name, "key": key, "inputs": [a.key for a in inputs], "seconds": seconds, "summary": summary},
        )
        return Artifact(name, key, path, summary, cached=False)
