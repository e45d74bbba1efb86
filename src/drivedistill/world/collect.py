"""`drivedistill collect`: drive the expert in the default world and write a SceneStore.

    drivedistill collect --preset smoke --out runs/smoke/store [--workers 2] [--world.num_episodes=20]

Episodes are grouped into shards of `--episodes-per-shard`; each shard is one task of a spawn-safe
process pool (the worker runs its episodes, encodes and writes the shard atomically) and the manifest is
rewritten atomically after every shard. Re-running into the same --out resumes: complete shards (in the
manifest, or written but not yet recorded and verified) are kept, the others are rewritten. The world
section of the preset / --config / overrides is resolved into a `WorldConfig` and saved with the store.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.resources
import json
import multiprocessing
import queue
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from drivedistill.config import ConfigError, load_config, load_yaml, to_dict
from drivedistill.data.store import SceneStoreWriter, StoreError, write_shard
from drivedistill.executor import ExecutorConfig, add_executor_args, make_executor
from drivedistill.world.config import WorldConfig

PRESETS = ("smoke", "default")


def preset_path(preset: str) -> Path:
    """Path of the packaged preset src/drivedistill/configs/<preset>.yaml."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets are {list(PRESETS)}")
    return Path(str(importlib.resources.files("drivedistill") / "configs" / f"{preset}.yaml"))


def resolve_world_config(
    preset: str | None, config_file: str | Path | None, overrides: Sequence[str]
) -> WorldConfig:
    """The `world:` sections of the preset, then of `config_file`, then `--world.key=value` overrides."""
    layers: list[dict[str, Any]] = []
    for path in [preset_path(preset) if preset else None, config_file]:
        if path is None:
            continue
        data = load_yaml(path)
        section = data.get("world", {})
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: the `world:` section must be a mapping")
        layers.append(section)
    stripped = []
    for arg in overrides:
        text = arg[2:] if arg.startswith("--") else arg
        if not text.startswith("world."):
            raise ConfigError(f"collect: override {arg!r} is not a world setting; use --world.<key>=<value>")
        stripped.append(text[len("world.") :])
    return load_config(WorldConfig, *layers, overrides=stripped)


def _collect_shard(
    world: dict[str, Any],
    root: str,
    index: int,
    episode_indices: list[int],
    val_fraction: float,
    config_hash: str,
    progress: Any,
) -> dict[str, Any]:
    """Worker: run the episodes of one shard and write it; `progress.put(num_samples)` per episode."""
    from drivedistill.config import from_dict
    from drivedistill.world.episode import run_episode

    cfg = from_dict(WorldConfig, world)
    scenes, episodes = [], {}
    for i in episode_indices:
        result = run_episode(cfg, i)
        info: dict[str, Any] = {
            "index": i,
            "scenario": result.scenario,
            "collided": bool(result.collided),
            "offroad": bool(result.offroad),
            "stats": to_dict(result.stats),
        }
        if cfg.split_of(i) is not None:
            info["split"] = cfg.split_of(i)
        episodes[result.episode] = json.loads(json.dumps(info, default=float))
        scenes.extend(result.scenes)
        if progress is not None:
            progress.put(len(result.scenes))
    return write_shard(
        Path(root), index, scenes, val_fraction=val_fraction, config_hash=config_hash, episodes=episodes
    )


def _collect_shard_task(args: tuple[Any, ...]) -> dict[str, Any]:
    """Executor task (no progress queue): one shard, written by the worker; returns its manifest entry."""
    world, root, index, episode_indices, val_fraction, config_hash = args
    return _collect_shard(world, root, index, episode_indices, val_fraction, config_hash, None)


class _Inline:
    """Progress sink for the in-process path (workers=1): forwards to a callback."""

    def __init__(self, callback: Any) -> None:
        self.callback = callback

    def put(self, n: int) -> None:
        self.callback(n)


def collect(
    world: WorldConfig,
    out: str | Path,
    *,
    workers: int = 1,
    episodes_per_shard: int = 4,
    val_fraction: float = 0.2,
    show_progress: bool = True,
    executor: Any = None,
) -> dict[str, Any]:
    """Collect `world.num_episodes` (+ `world.val_episodes`) expert episodes into a SceneStore at `out`;
    returns the manifest.

    `executor` (a `drivedistill.executor.Executor`, e.g. Ray) runs one task per shard instead of the
    local pool; workers write their shards into `out`, which must therefore be on a file system every
    worker sees (a shared mount on a multi-node cluster). Failed shards are retried by the executor, then
    reported all together after the others are recorded (a re-run resumes)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if workers < 1 or episodes_per_shard < 1:
        raise ConfigError(
            f"collect: --workers and --episodes-per-shard must be >= 1, got {workers}, {episodes_per_shard}"
        )
    indices = world.episode_indices()
    n = len(indices)
    shards = [indices[s : s + episodes_per_shard] for s in range(0, n, episodes_per_shard)]
    resolved = {
        "world": world.data_key(),
        "collect": {"episodes_per_shard": episodes_per_shard, "val_fraction": val_fraction},
    }
    writer = SceneStoreWriter(Path(out), resolved, num_shards=len(shards), val_fraction=val_fraction)
    done = writer.completed()
    todo = [k for k in range(len(shards)) if k not in done]
    world_dict = to_dict(world)
    start = time.perf_counter()
    with Progress(
        TextColumn("collect"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("episodes · {task.fields[samples]} samples · {task.fields[rate]:.1f} samples/s"),
        TimeElapsedColumn(),
        disable=not show_progress,
    ) as bar:
        task = bar.add_task(
            "collect", total=n, completed=sum(len(shards[k]) for k in done), samples=0, rate=0.0
        )
        counted = 0

        def tick(num_samples: int) -> None:
            nonlocal counted
            counted += num_samples
            bar.update(
                task, advance=1, samples=counted, rate=counted / max(time.perf_counter() - start, 1e-9)
            )

        args = [(world_dict, str(out), k, shards[k], val_fraction, writer.config_hash) for k in todo]
        if executor is not None:
            failed = []
            for outcome in executor.imap(_collect_shard_task, args):
                k = args[outcome.index][2]
                if outcome.value is None:
                    failed.append(f"shard {k} after {outcome.attempts} attempt(s): {outcome.error}")
                    continue
                writer.add_shard(outcome.value)
                counted += int(outcome.value["num_rows"])
                rate = counted / max(time.perf_counter() - start, 1e-9)
                bar.update(task, advance=len(shards[k]), samples=counted, rate=rate)
            if failed:
                raise RuntimeError(f"collect: {len(failed)} shard(s) of {out} failed: " + "; ".join(failed))
        elif workers == 1:
            for a in args:
                writer.add_shard(_collect_shard(*a, _Inline(tick)))
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Manager() as manager, cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                q = manager.Queue()
                futures = {pool.submit(_collect_shard, *a, q): a[2] for a in args}
                pending = set(futures)
                while pending:
                    finished, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                    _drain(q, tick)
                    for fut in finished:
                        try:
                            writer.add_shard(fut.result())
                        except Exception as e:
                            raise RuntimeError(f"collect: shard {futures[fut]} of {out} failed: {e}") from e
                _drain(q, tick)
    manifest = writer.finish()
    manifest["collect_seconds"] = time.perf_counter() - start
    manifest["collected_samples"] = counted
    return manifest


def _drain(q: Any, tick: Any) -> None:
    while True:
        try:
            tick(q.get_nowait())
        except queue.Empty:
            return


def _summary(manifest: Mapping[str, Any], out: Path) -> str:
    st = manifest["stats"]
    size = sum(int(s["bytes"]) for s in manifest["shards"])
    rate = st["expert_collision_free_rate"]
    lines = [
        f"store {out}: {st['num_samples']} samples from {st['num_episodes']} episodes in {len(manifest['shards'])} shards "
        f"({size / 1e6:.1f} MB, {size / max(st['num_samples'], 1) / 1e3:.1f} kB/sample)",
        f"samples per split: {st['samples_per'].get('split', {})}   episodes per split: {st['episodes_per_split']}",
        f"expert collision-free rate: {'n/a' if rate is None else f'{rate:.3f}'}",
    ]
    if manifest["collected_samples"]:
        secs = manifest["collect_seconds"]
        lines.append(
            f"collected {manifest['collected_samples']} new samples in {secs:.1f} s ({manifest['collected_samples'] / secs:.1f} samples/s)"
        )
    if manifest["val_fraction"] > 0 and not st["samples_per"].get("split", {}).get("val"):
        lines.append(
            "warning: the val split is empty; collect more episodes (--world.num_episodes) or raise --val-fraction"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="drivedistill collect", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="default", help="packaged world preset")
    parser.add_argument("--config", type=Path, help="YAML file whose `world:` section overrides the preset")
    parser.add_argument("--out", type=Path, required=True, help="store directory (resumed if it exists)")
    parser.add_argument("--workers", type=int, default=1, help="processes (spawn); 1 = in-process")
    parser.add_argument("--episodes-per-shard", type=int, default=4)
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="fraction of episodes in the val split"
    )
    parser.add_argument("--no-progress", action="store_true")
    add_executor_args(parser, workers=False)
    args, overrides = parser.parse_known_args(argv)
    try:
        world = resolve_world_config(args.preset, args.config, overrides)
        executor = None
        if args.executor == "ray":  # local keeps the spawn pool above (per-episode progress)
            workers = args.workers if args.workers > 1 else 0
            executor = make_executor(
                ExecutorConfig("ray", workers, args.retries, args.ray_address, args.ray_num_cpus)
            )
        manifest = collect(
            world,
            args.out,
            workers=args.workers,
            episodes_per_shard=args.episodes_per_shard,
            val_fraction=args.val_fraction,
            show_progress=not args.no_progress,
            executor=executor,
        )
    except (ConfigError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(_summary(manifest, args.out))
    return 0
