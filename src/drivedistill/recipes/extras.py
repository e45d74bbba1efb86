"""Per-sample targets produced by one stage for another (annotation embeddings, latent codes, teacher
logits), stored as one npz per stage: `tokens` (N,) and, per extra name, an (N, ...) array.

Loaded back as `{name: {token: array}}`, the form `SceneDataset(store, split, extras=...)` takes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from drivedistill.utils.io import atomic_write_with

Extras = dict[str, dict[str, np.ndarray]]


def save_extras(path: Path, extras: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Write extras (every name must cover the same tokens) atomically to `path` (.npz)."""
    names = sorted(extras)
    if not names:
        raise ValueError(f"{path}: no extras to save")
    tokens = sorted(extras[names[0]])
    for n in names:
        if sorted(extras[n]) != tokens:
            raise ValueError(f"{path}: extra {n!r} covers other tokens than {names[0]!r}")
    arrays = {"tokens": np.array(tokens)}
    arrays.update({n: np.stack([np.asarray(extras[n][t]) for t in tokens]) for n in names})

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: savez would append ".npz" to the temp name
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]

    atomic_write_with(path, write)


def load_extras(path: Path) -> Extras:
    if not Path(path).exists():
        raise FileNotFoundError(f"extras file {path} is missing; re-run the stage that writes it")
    with np.load(path, allow_pickle=False) as z:
        tokens = [str(t) for t in z["tokens"]]
        return {n: dict(zip(tokens, z[n])) for n in z.files if n != "tokens"}


def merge_extras(*parts: Extras) -> Extras:
    out: Extras = {}
    for p in parts:
        for name, by_token in p.items():
            if name in out:
                raise ValueError(f"extra {name!r} produced by two stages")
            out[name] = by_token
    return out


def read_extras(paths: Sequence[Path]) -> Extras:
    """Merge the extras files among `paths` that exist (a recipe stage may write none)."""
    return merge_extras(*[load_extras(p) for p in paths if Path(p).exists()])
