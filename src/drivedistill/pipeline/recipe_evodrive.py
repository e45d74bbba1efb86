"""EvoDriveVLA stages: perception pretraining of the VLA's vision encoder (+ the "before" probe), then
the future-aware oracle teacher. The VLA students start from the perception-pretrained VLM; the
`evodrive` method reads the oracle (artifact "oracle") online.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drivedistill.config import deep_merge, from_dict, to_dict
from drivedistill.pipeline.cache import Artifact, StageRunner
from drivedistill.pipeline.config import StudyConfig

ORACLE_TRAIN = {"epochs": 4, "batch_size": 8, "lr": 2e-3, "log_every": 10}


def _vlm_config(cfg: StudyConfig, store: Artifact) -> Any:
    from drivedistill.data.store import SceneStore
    from drivedistill.models.vlm import VLMConfig

    cam = SceneStore(store.store_dir()).config.get("world", {}).get("camera", {})
    hw = [int(cam.get("height", 128)), int(cam.get("width", 256))]
    return from_dict(VLMConfig, deep_merge({"image_hw": hw}, cfg.evodrive.get("vlm", {})), "evodrive.vlm")


def perception_config(cfg: StudyConfig) -> Any:
    from drivedistill.models.perception import PerceptionConfig

    return from_dict(PerceptionConfig, cfg.evodrive.get("perception", {}), "evodrive.perception")


def split_scenes(store: Artifact) -> tuple[list[Any], list[Any]]:
    from drivedistill.data.store import SceneStore

    scenes = SceneStore(store.store_dir())
    return list(scenes.scenes("train")), list(scenes.scenes("val"))


def perception_stage(
    runner: StageRunner, cfg: StudyConfig, store: Artifact, prior: dict[str, Artifact]
) -> Artifact:
    """Build the tiny VLM, pretrain its vision encoder on BEV occupancy, probe it, save it."""
    from drivedistill.models.perception import linear_probe, pretrain_perception
    from drivedistill.models.vlm import VLMCore

    vlm_cfg, pcfg = _vlm_config(cfg, store), perception_config(cfg)
    seed = int(cfg.evodrive.get("seed", 0))

    def run(d: Path) -> dict[str, Any]:
        import torch

        torch.manual_seed(seed)
        train, val = split_scenes(store)
        core = VLMCore.build(vlm_cfg)
        fresh = linear_probe(core, train, val, pcfg)
        losses = pretrain_perception(core, train, pcfg, seed=seed)
        before = linear_probe(core, train, val, pcfg)
        core.save(d / "perception")
        return {
            "probe_random_init": fresh,
            "probe_pretrained": before,
            "pretrain_loss": {"first": losses[0], "last": losses[-1]},
            "artifacts": {"perception": "perception"},
            "student_paths": {"vla": {"vlm": {"pretrained_dir": "perception"}}},
        }

    return runner.run(
        "evodrive_perception",
        {"vlm": to_dict(vlm_cfg), "perception": to_dict(pcfg), "seed": seed},
        [store],
        run,
    )


def oracle_stage(
    runner: StageRunner, cfg: StudyConfig, store: Artifact, prior: dict[str, Artifact]
) -> Artifact:
    """Train the future-aware oracle (coarse-to-fine) from the perception-pretrained VLM."""
    from drivedistill import registry
    from drivedistill.data.dataset import SceneDataset
    from drivedistill.data.store import SceneStore
    from drivedistill.models.teachers.oracle import OracleConfig
    from drivedistill.train.loop import fit
    from drivedistill.utils.runtime import seed_everything

    perception = prior["evodrive_perception"]
    oracle_cfg_dict = deep_merge(
        cfg.evodrive.get("oracle", {}), {"vlm": {"pretrained_dir": str(perception.path / "perception")}}
    )
    train_cfg = cfg.recipe_train("evodrive", "oracle_train", ORACLE_TRAIN)
    stage_cfg = {"oracle": cfg.evodrive.get("oracle", {}), "train": to_dict(train_cfg)}

    def run(d: Path) -> dict[str, Any]:
        scenes = SceneStore(store.store_dir())
        train = SceneDataset(scenes, "train", cache_decoded=True)
        seed_everything(train_cfg.seed)
        oracle = registry.build(
            "teacher", "oracle", from_dict(OracleConfig, oracle_cfg_dict, "evodrive.oracle")
        )
        result = fit(
            oracle,
            train,
            train_cfg,
            d / "train",
            collate=train.collate,
            resume=(d / "train" / "checkpoints").exists(),
        )
        oracle.save(d / "oracle")
        return {"train_losses": result.losses, "artifacts": {"oracle": "oracle"}}

    return runner.run("evodrive_oracle", stage_cfg, [store, perception], run)
