"""torch Dataset over a SceneStore split, and `collate` (list of Scenes → `Batch` of tensors).

    ds = SceneDataset(store, "train", extras={"latent/ego_codes": codes_by_token})
    loader = DataLoader(ds, batch_size=16, shuffle=True, collate_fn=ds.collate)

`collate` turns images into float [0, 1] CHW tensors; the privileged part is collated only when every
scene has it. Extras are per-sample arrays produced by earlier stages (annotations, latent codes),
keyed by name then token; they are stacked into `Batch.extras[name]` with a leading batch dimension.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from drivedistill.data.store import SceneStore, StoreError
from drivedistill.types import AgentInputBatch, Batch, PrivilegedBatch, Scene, ValidationError


def _images(scenes: Sequence[Scene], name: str, arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack (..., H, W, C) uint8 arrays into (B, ..., C, H, W) float in [0, 1]."""
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        by_shape = {a.shape: s.token for a, s in zip(arrays, scenes)}
        raise ValidationError(f"collate: {name} shapes differ within a batch: {by_shape} (shape → a token)")
    x = torch.from_numpy(np.stack(arrays))
    return x.movedim(-1, -3).float().div_(255.0)


def _stack(scenes: Sequence[Scene], name: str, arrays: Sequence[np.ndarray]) -> torch.Tensor:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        by_shape = {a.shape: s.token for a, s in zip(arrays, scenes)}
        raise ValidationError(f"collate: {name} shapes differ within a batch: {by_shape} (shape → a token)")
    return torch.from_numpy(np.stack(arrays))


def collate(scenes: Sequence[Scene], extras: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> Batch:
    """Scenes → `Batch`.

    inputs      camera (B, 3, H, W), bev (B, C, Hb, Wb) float [0, 1]; ego_history (B, 4, 3), ego_status (B, 3)
                float32; command (B,) long
    privileged  trajectory (B, 8, 3), valid (B, 8) bool, future_frames (B, 3, 3, H, W) float [0, 1],
                future_ego_status (B, 8, 3), labelled_bev (B, 3, Hb, Wb) float [0, 1] or None — or None
                unless every scene carries its privileged part
    extras      name → (B, ...) tensor stacked from `extras[name][token]`
    """
    if not scenes:
        raise ValidationError("collate: empty list of scenes")
    ais = [s.agent_input for s in scenes]
    inputs = AgentInputBatch(
        camera=_images(scenes, "camera", [a.camera for a in ais]),
        bev=_images(scenes, "bev", [a.bev for a in ais]),
        ego_history=_stack(scenes, "ego_history", [a.ego_history.astype(np.float32) for a in ais]),
        ego_status=_stack(scenes, "ego_status", [a.ego_status.astype(np.float32) for a in ais]),
        command=torch.tensor([int(a.command) for a in ais], dtype=torch.long),
    )
    privileged = None
    pvs = [s.privileged for s in scenes]
    if all(p is not None for p in pvs):
        ps = [p for p in pvs if p is not None]
        privileged = PrivilegedBatch(
            trajectory=_stack(
                scenes, "future_trajectory", [p.future_trajectory.astype(np.float32) for p in ps]
            ),
            valid=_stack(scenes, "future_valid", [p.future_valid for p in ps]),
            future_frames=_images(scenes, "future_frames", [p.future_frames for p in ps]),
            future_ego_status=_stack(
                scenes, "future_ego_status", [p.future_ego_status.astype(np.float32) for p in ps]
            ),
            labelled_bev=(
                _images(scenes, "labelled_bev", [p.labelled_bev for p in ps])  # type: ignore[misc]
                if all(p.labelled_bev is not None for p in ps)
                else None
            ),
        )
    return Batch([s.token for s in scenes], inputs, privileged, collate_extras(scenes, extras or {}))


def collate_extras(
    scenes: Sequence[Scene], extras: Mapping[str, Mapping[str, np.ndarray]]
) -> dict[str, torch.Tensor]:
    """name → (B, ...) tensor stacked from `extras[name][token]` for the scenes' tokens, checked."""
    out: dict[str, torch.Tensor] = {}
    for name, by_token in extras.items():
        missing = [s.token for s in scenes if s.token not in by_token]
        if missing:
            raise ValidationError(
                f"collate: extra {name!r} has no entry for token {missing[0]!r} ({len(missing)} of {len(scenes)} "
                "missing); re-run the stage that produces it on this store"
            )
        out[name] = _stack(scenes, f"extras[{name!r}]", [np.asarray(by_token[s.token]) for s in scenes])
    return out


class SceneDataset(Dataset[Scene]):
    """The scenes of one split of a SceneStore, in store order.

    extras           name → {token: array}; every token of the split must be present (checked here)
    with_privileged  False strips the privileged part (deployment-faithful inputs, faster decoding)
    cache_decoded    keep decoded Scenes in memory (≈ raw image bytes per sample; for small stores)
    """

    def __init__(
        self,
        store: SceneStore,
        split: str | None,
        extras: Mapping[str, Mapping[str, np.ndarray]] | None = None,
        with_privileged: bool = True,
        cache_decoded: bool = False,
    ) -> None:
        self.store, self.split = store, split
        self.tokens = store.tokens(split)
        if not self.tokens:
            raise StoreError(
                f"{store.root}: split {split!r} has no samples (collect more episodes or change val_fraction)"
            )
        self.extras = dict(extras or {})
        for name, by_token in self.extras.items():
            missing = [t for t in self.tokens if t not in by_token]
            if missing:
                raise StoreError(
                    f"extra {name!r} lacks {len(missing)} of {len(self.tokens)} tokens of split {split!r} in "
                    f"{store.root}, e.g. {missing[0]!r}; re-run the stage that produces {name!r} on this store"
                )
        self.with_privileged = with_privileged
        self._decoded: dict[int, Scene] | None = {} if cache_decoded else None

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> Scene:
        if self._decoded is not None and index in self._decoded:
            return self._decoded[index]
        scene = self.store.load(self.tokens[index], with_privileged=self.with_privileged)
        if self._decoded is not None:
            self._decoded[index] = scene
        return scene

    def collate(self, scenes: Sequence[Scene]) -> Batch:
        """`collate` with this dataset's extras (pass as DataLoader's collate_fn)."""
        return collate(scenes, self.extras)
