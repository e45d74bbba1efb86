"""Text encoder: the bundled all-MiniLM-L6-v2 offline, the on-disk embedding cache, the CLIP path error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drivedistill.models.text_encoder import TextEncoder, TextEncoderConfig


def test_minilm_encodes_offline_and_caches(tmp_path: Path) -> None:
    cfg = TextEncoderConfig(cache_dir=str(tmp_path), batch_size=8)
    enc = TextEncoder(cfg)
    texts = [
        "The car 12 m ahead is braking hard.",
        "The lead car brakes sharply 12 m ahead.",
        "The road ahead is clear.",
    ]
    emb = enc.encode([*texts, texts[0]])
    assert emb.shape == (4, 384) and emb.dtype == np.float32 and enc.dim == 384
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert enc.encoded == 3  # the duplicate was encoded once
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2  # real weights: paraphrases are closer than unrelated text
    again = TextEncoder(cfg)  # a new process would load the same shards
    assert np.allclose(again.encode(texts), emb[:3]) and again.encoded == 0
    assert list((tmp_path).rglob("emb-*.npz"))


def test_clip_needs_a_local_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"text_encoder\.path"):
        TextEncoderConfig(kind="clip")
    with pytest.raises(FileNotFoundError, match="not a local CLIP checkpoint"):
        TextEncoder(TextEncoderConfig(kind="clip", path=str(tmp_path / "nope")))
