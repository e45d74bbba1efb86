"""`drivedistill collect --source NAME ...`: any registered `Source` → a SceneStore.

    drivedistill collect --source nuscenes --root DIR --version v1.0-mini [--split mini_train] --out STORE
    drivedistill collect --source av2 --root ../shared/data/argoverse2 --out STORE
    drivedistill collect --source av2_forecasting --root ../shared/data/argoverse2/forecasting_scenarios --out STORE
    drivedistill collect [--source world] --preset smoke --out STORE     (the world's own collector)

Source options are `--source.<field>=value` (the fields of the source's config dataclass, e.g.
`--source.cameras=[CAM_FRONT,CAM_BACK]`); `--root`, `--version` and `--split` are shorthands. Episodes
(logs, scenes) are grouped into shards of `--episodes-per-shard`; re-running into the same --out resumes
(complete shards are kept, `SceneStoreWriter.completed`). One process: the sources are I/O + decode bound.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from drivedistill.config import ConfigError, load_config
from drivedistill.data.sources.base import Source, SourceError
from drivedistill.data.store import SceneStoreWriter, StoreError, write_shard


def build_source(name: str, options: dict[str, Any], overrides: list[str]) -> Source[Any]:
    """Build a registered source from shorthand options (non-None values) and `--source.key=value`."""
    from drivedistill import registry

    entry = registry.get("source", name)
    if entry.config_cls is None:
        raise ConfigError(f"source {name!r} has no config class")
    import dataclasses

    known = {f.name for f in dataclasses.fields(entry.config_cls)}
    layer = {k: v for k, v in options.items() if v is not None}
    for key in layer:
        if key not in known:
            raise ConfigError(
                f"collect: source {name!r} has no --{key} option (its options: {sorted(known)})"
            )
    stripped = []
    for arg in overrides:
        text = arg[2:] if arg.startswith("--") else arg
        if not text.startswith("source."):
            raise ConfigError(
                f"collect: unrecognised argument {arg!r}; source options are --source.<key>=<value>"
            )
        stripped.append(text[len("source.") :])
    cfg: Any = load_config(entry.config_cls, layer, overrides=stripped)
    source = entry.builder(cfg)
    if not isinstance(source, Source):
        raise ConfigError(f"source {name!r} does not implement drivedistill.data.sources.base.Source")
    return source


def collect_source(
    source: Source[Any],
    out: str | Path,
    *,
    episodes_per_shard: int = 4,
    val_fraction: float = 0.2,
    progress: bool = True,
) -> dict[str, Any]:
    """Write every episode of `source` into a SceneStore at `out` (resumes); returns the manifest with
    "collect_seconds" and "collected_samples" added."""
    if episodes_per_shard < 1:
        raise ConfigError(f"collect: --episodes-per-shard must be >= 1, got {episodes_per_shard}")
    eps = source.episodes()
    shards = [eps[s : s + episodes_per_shard] for s in range(0, len(eps), episodes_per_shard)]
    resolved = {
        **source.store_config(),
        "collect": {
            "source": source.name,
            "episodes_per_shard": episodes_per_shard,
            "val_fraction": val_fraction,
        },
    }
    writer = SceneStoreWriter(Path(out), resolved, num_shards=len(shards), val_fraction=val_fraction)
    done = writer.completed()
    start, counted = time.perf_counter(), 0
    for k, group in enumerate(shards):
        if k in done:
            continue
        scenes, infos = [], {}
        for ep in group:
            records = source.load(ep)
            ep_scenes = source.scenes_of(records)
            if ep_scenes:
                infos[ep_scenes[0].episode] = source.episode_info(records)
            scenes.extend(ep_scenes)
        writer.add_shard(
            write_shard(
                Path(out),
                k,
                scenes,
                val_fraction=val_fraction,
                config_hash=writer.config_hash,
                episodes=infos,
            )
        )
        counted += len(scenes)
        if progress:
            rate = counted / max(time.perf_counter() - start, 1e-9)
            print(
                f"collect {source.name}: shard {k + 1}/{len(shards)} · {counted} samples · {rate:.2f} samples/s"
            )
    manifest = writer.finish()
    manifest["collect_seconds"] = time.perf_counter() - start
    manifest["collected_samples"] = counted
    return manifest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--source", default="world")
    known, _ = probe.parse_known_args(argv)
    if known.source == "world":  # the world has its own parallel collector and presets
        from drivedistill.world.collect import main as world_main

        return world_main([a for a in argv if a not in ("--source", "world") and a != "--source=world"])
    parser = argparse.ArgumentParser(
        prog="drivedistill collect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True, help="a registered source (drivedistill list source)")
    parser.add_argument("--root", help="the source's data root")
    parser.add_argument("--version", help="nuScenes: v1.0-mini | v1.0-trainval")
    parser.add_argument("--split", help="nuScenes: official split (train, val, mini_train, mini_val, ...)")
    parser.add_argument("--out", type=Path, required=True, help="store directory (resumed if it exists)")
    parser.add_argument("--episodes-per-shard", type=int, default=4)
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="fraction of episodes in the val split"
    )
    parser.add_argument("--no-progress", action="store_true")
    args, overrides = parser.parse_known_args(argv)
    try:
        options = {"root": args.root, "version": args.version, "split": args.split}
        source = build_source(args.source, options, overrides)
        manifest = collect_source(
            source,
            args.out,
            episodes_per_shard=args.episodes_per_shard,
            val_fraction=args.val_fraction,
            progress=not args.no_progress,
        )
    except (ConfigError, StoreError, SourceError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    st = manifest["stats"]
    secs = manifest["collect_seconds"]
    print(
        f"store {args.out}: {st['num_samples']} samples from {st['num_episodes']} episodes; "
        f"{manifest['collected_samples']} new in {secs:.1f} s"
    )
    return 0


def source_stage(runner: Any, cfg: Any) -> Any:
    """The study's collect stage for `source: {name: ..., ...}` (pipeline/study.py calls this): the
    source's episodes into the stage's store, keyed by the source's resolved config."""
    options = {k: v for k, v in cfg.source.items() if k != "name"}
    source = build_source(str(cfg.source["name"]), options, [])
    stage_cfg = {
        **source.store_config(),
        "val_fraction": cfg.val_fraction,
        "episodes_per_shard": cfg.episodes_per_shard,
    }

    def run(d: Path) -> dict[str, Any]:
        manifest = collect_source(
            source, d / "store", episodes_per_shard=cfg.episodes_per_shard, val_fraction=cfg.val_fraction
        )
        return {
            "store": "store",
            "stats": manifest.get("stats", {}),
            "seconds": manifest.get("collect_seconds"),
        }

    return runner.run("collect", stage_cfg, [], run)
