"""VLM-AD: VLM annotations as auxiliary training signals (text alignment + action classification).

Both heads read the student's features["plan_query"] (B, D) (optionally also "scene_tokens" (B, N, D)):
- text alignment (Q1): 3 learnable queries → 3 transformer decoder layers (self-attention, 8-head
  cross-attention to the context, FFN) → MLP → E, one output per text (current action, next action,
  reasoning), aligned to the frozen text encoder's embeddings "vlm_ad/text_emb" (B, 3, E);
- action (Q2): the same decoder with its own 3 queries, each classifying one label group (control 4,
  turn 4, lane 3) with cross-entropy against "vlm_ad/labels" (B, 3) long.
`L = L_imitation + align_weight·L_align + action_weight·L_action` (paper: 1.0 and 0.1).
"vlm_ad/mask" (B,) float is 0 for samples whose annotation failed: they train the plan only.

Alignment ("softmax with a temperature + KL", the paper does not say over which axis). Our default,
"feature_kl", is knowledge-distillation style per text slot: both vectors are L2-normalised, turned
into distributions over the E embedding dimensions by softmax(·/τ), and the head minimises
KL(p_text || p_head), averaged over slots and valid samples (no τ² factor). The option "contrastive"
is CLIP-style: per slot, softmax over the batch of cosine similarities / τ and cross-entropy to the
matching sample (weak when many samples share a text, as rule annotations do).

The heads are training-only: `deployable()` returns the bare student.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drivedistill.annotate.schema import ALL_LABEL_GROUPS, LABEL_GROUPS
from drivedistill.config import check
from drivedistill.methods.base import Method, MethodContext
from drivedistill.methods.imitation import ImitationConfig, imitation_losses
from drivedistill.models.students.base import Student
from drivedistill.registry import register
from drivedistill.types import Batch, ValidationError

if TYPE_CHECKING:
    from drivedistill.annotate.cache import AnnotationCache
    from drivedistill.data.store import SceneStore
    from drivedistill.models.text_encoder import TextEncoder

TEXT_EMB, LABELS, MASK = "vlm_ad/text_emb", "vlm_ad/labels", "vlm_ad/mask"
GROUP_SIZES = tuple(len(v) for v in LABEL_GROUPS.values())  # (4, 4, 3): control, turn, lane
ALL_GROUP_SIZES = tuple(len(v) for v in ALL_LABEL_GROUPS.values())  # + cause 8, agent 4, rule 6


@dataclass
class VlmAdConfig:
    align_weight: float = field(default=1.0, metadata=check(ge=0))  # paper: 1.0
    action_weight: float = field(default=0.1, metadata=check(ge=0))  # paper: 0.1
    questions: Literal["q1", "q2", "both"] = "both"  # paper's ablation: Q1 texts only, Q2 labels only, both
    alignment: Literal["feature_kl", "contrastive"] = "feature_kl"  # see the module docstring
    # τ; normalised 384-d vectors have entries ~0.05, so logits ~ ±1..3
    temperature: float = field(default=0.05, metadata=check(gt=0))
    context: Literal["plan_query", "plan_and_scene"] = "plan_query"  # what the heads cross-attend to
    hidden_dim: int = field(default=256, metadata=check(ge=1))
    num_layers: int = field(default=3, metadata=check(ge=1))  # paper: 3 cross-attention layers
    num_heads: int = field(default=8, metadata=check(ge=1))  # paper: 8
    # E of the text encoder (all-MiniLM-L6-v2: 384, CLIP ViT-B/32: 512)
    text_dim: int = field(default=384, metadata=check(ge=1))
    dropout: float = field(default=0.1, metadata=check(ge=0, lt=1))
    # also classify the cause groups (cause, agent, rule; issue #16) when the annotations carry them
    cause_labels: bool = True
    imitation: ImitationConfig = field(default_factory=ImitationConfig)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"VlmAdConfig.temperature must be > 0, got {self.temperature}")
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"VlmAdConfig.hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.align_weight < 0 or self.action_weight < 0:
            raise ValueError("VlmAdConfig.align_weight / action_weight must be >= 0")


class QueryDecoder(nn.Module):
    """3 learnable queries attend to a context (B, N, D_in) through `num_layers` decoder layers → (B, 3, H)."""

    def __init__(self, in_dim: int, cfg: VlmAdConfig, num_queries: int = 3) -> None:
        super().__init__()
        h = cfg.hidden_dim
        self.proj = nn.Linear(in_dim, h)
        self.queries = nn.Parameter(torch.randn(num_queries, h) * 0.02)
        layer = nn.TransformerDecoderLayer(
            h, cfg.num_heads, 4 * h, cfg.dropout, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, cfg.num_layers, norm=nn.LayerNorm(h))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        q = self.queries.unsqueeze(0).expand(context.shape[0], -1, -1)
        return self.decoder(q, self.proj(context))


def alignment_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, cfg: VlmAdConfig
) -> torch.Tensor:
    """pred, target (B, S, E); mask (B,) float → scalar (mean over valid samples and the S slots)."""
    pred, target = F.normalize(pred, dim=-1), F.normalize(target, dim=-1)
    tau = cfg.temperature
    if cfg.alignment == "feature_kl":
        log_q = F.log_softmax(pred / tau, dim=-1)
        log_p = F.log_softmax(target / tau, dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1)  # (B,)
        return (kl * mask).sum() / mask.sum().clamp_min(1.0)
    valid = mask > 0
    if int(valid.sum()) < 2:
        return pred.sum() * 0.0  # contrast needs two samples; keeps the graph connected
    p, t = pred[valid], target[valid]  # (V, S, E)
    logits = torch.einsum("ise,jse->sij", p, t) / tau  # (S, V, V)
    labels = torch.arange(p.shape[0], device=p.device).expand(p.shape[1], -1)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


class VlmAd(Method):
    """Student + training-only text-alignment and action heads."""

    required_extras = (TEXT_EMB, LABELS, MASK)

    def __init__(self, cfg: VlmAdConfig, student: Student) -> None:
        super().__init__(student)
        if student.feature_dim <= 0:
            raise ValueError(
                f"vlm_ad: student {type(student).__name__} sets no feature_dim (D of features['plan_query'])"
            )
        self.cfg = cfg
        self.use_align = cfg.questions in ("q1", "both")
        self.use_action = cfg.questions in ("q2", "both")
        d = student.feature_dim
        # training-only heads; absent (None) when the ablation drops their question
        self.align_decoder = QueryDecoder(d, cfg) if self.use_align else None
        self.align_mlp = (
            nn.Sequential(
                nn.Linear(cfg.hidden_dim, cfg.hidden_dim), nn.GELU(), nn.Linear(cfg.hidden_dim, cfg.text_dim)
            )
            if self.use_align
            else None
        )
        self.group_sizes = ALL_GROUP_SIZES if cfg.cause_labels else GROUP_SIZES
        self.action_decoder = (
            QueryDecoder(d, cfg, num_queries=len(self.group_sizes)) if self.use_action else None
        )
        self.action_classifiers = (
            nn.ModuleList(nn.Linear(cfg.hidden_dim, n) for n in self.group_sizes) if self.use_action else None
        )

    def _context(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        if "plan_query" not in features:
            raise ValidationError(
                f"vlm_ad: student {type(self.student).__name__} returned no features['plan_query']"
            )
        ctx = features["plan_query"].unsqueeze(1)  # (B, 1, D)
        if self.cfg.context == "plan_and_scene":
            ctx = torch.cat([ctx, features["scene_tokens"]], dim=1)  # (B, 1 + N, D)
        return ctx

    def _extra(self, batch: Batch, name: str) -> torch.Tensor:
        if name not in batch.extras:
            raise ValidationError(
                f"vlm_ad: batch has no extras[{name!r}]; build them with drivedistill.methods.vlm_ad.vlm_ad_extras "
                "from the annotation cache (`drivedistill annotate`) and pass them to SceneDataset(extras=...)"
            )
        return batch.extras[name]

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = self.student(batch.inputs)
        result = imitation_losses(out, batch, self.cfg.imitation, self.student)
        total = result["loss"]
        ctx = self._context(dict(out.features))
        mask = self._extra(batch, MASK).to(ctx.dtype)
        if self.align_decoder is not None and self.align_mlp is not None:
            target = self._extra(batch, TEXT_EMB).to(ctx.dtype)
            if target.shape[-1] != self.cfg.text_dim:
                raise ValidationError(
                    f"vlm_ad: text embeddings have E={target.shape[-1]} but method.text_dim={self.cfg.text_dim}; "
                    f"set --method.text_dim={target.shape[-1]} (it must match the text encoder)"
                )
            pred = self.align_mlp(self.align_decoder(ctx))  # (B, 3, E)
            align = alignment_loss(pred, target, mask, self.cfg)
            total = total + self.cfg.align_weight * align
            result["align"] = align.detach()
        if self.action_decoder is not None and self.action_classifiers is not None:
            labels = self._extra(batch, LABELS).long()  # (B, 3) or (B, 6); −1 = not annotated
            groups = len(self.group_sizes)
            if labels.shape[1] < groups:  # an older cache without the cause groups
                labels = F.pad(labels, (0, groups - labels.shape[1]), value=-1)
            hidden = self.action_decoder(ctx)  # (B, G, H)
            ce = []
            for g, clf in enumerate(self.action_classifiers):
                w = mask * (labels[:, g] >= 0).to(mask.dtype)
                loss_g = F.cross_entropy(clf(hidden[:, g]), labels[:, g].clamp_min(0), reduction="none")
                ce.append((loss_g * w).sum() / w.sum().clamp_min(1.0))
            action = torch.stack(ce).mean()
            total = total + self.cfg.action_weight * action
            result["action"] = action.detach()
        result["loss"] = total
        return result


def vlm_ad_extras(
    tokens: Sequence[str],
    sample_hashes: Sequence[str],
    cache: AnnotationCache,
    annotator_key: str,
    encoder: TextEncoder,
) -> dict[str, dict[str, np.ndarray]]:
    """Batch extras for SceneDataset from the annotation cache and the text encoder.

    Returns {"vlm_ad/text_emb": {token: (3, E) f32}, "vlm_ad/labels": {token: (6,) int64, −1 = group not
    annotated},
    "vlm_ad/mask": {token: () f32}}; failed annotations get mask 0 (zeros elsewhere). A sample missing
    from the cache is an error: annotate the store first.
    """
    cached = cache.read(annotator_key)
    missing = [t for t, h in zip(tokens, sample_hashes) if h not in cached]
    if missing:
        raise KeyError(
            f"vlm_ad: {len(missing)} of {len(tokens)} samples (e.g. {missing[0]!r}) have no annotation under key "
            f"{annotator_key} in {cache.root}; run `drivedistill annotate --data STORE --out {cache.root}` first"
        )
    results = [cached[h] for h in sample_hashes]
    texts = [t for r in results if r.annotation is not None for t in r.annotation.texts()]
    emb = encoder.encode(texts).reshape(-1, 3, encoder.dim)
    out: dict[str, dict[str, np.ndarray]] = {TEXT_EMB: {}, LABELS: {}, MASK: {}}
    i = 0
    for token, r in zip(tokens, results):
        if r.annotation is None:
            out[TEXT_EMB][token] = np.zeros((3, encoder.dim), np.float32)
            out[LABELS][token] = np.full(len(ALL_GROUP_SIZES), -1, np.int64)
            out[MASK][token] = np.zeros((), np.float32)
            continue
        out[TEXT_EMB][token] = emb[i]
        out[LABELS][token] = np.asarray(r.annotation.all_label_ids(), np.int64)
        out[MASK][token] = np.ones((), np.float32)
        i += 1
    return out


def store_extras(
    store: SceneStore,
    split: str | None,
    annotations: str | Path,
    encoder: TextEncoder,
    annotator_key: str = "",
) -> dict[str, dict[str, np.ndarray]]:
    """`vlm_ad_extras` for one split of a SceneStore; `annotator_key` may be omitted when the cache holds one."""
    from drivedistill.annotate.cache import AnnotationCache

    cache = AnnotationCache(annotations)
    if not annotator_key:
        keys = cache.annotator_keys()
        if len(keys) != 1:
            raise KeyError(
                f"vlm_ad: {cache.root} holds annotations of {len(keys)} annotators {keys}; pass annotator_key "
                "(printed by `drivedistill annotate`)"
            )
        annotator_key = keys[0]
    tokens = store.tokens(split)
    return vlm_ad_extras(tokens, [store.sample_hash(t) for t in tokens], cache, annotator_key, encoder)


@register("method", "vlm_ad", VlmAdConfig)
def build(cfg: VlmAdConfig, student: Student, context: MethodContext) -> VlmAd:
    return VlmAd(cfg, student)
