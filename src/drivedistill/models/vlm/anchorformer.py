"""AnchorFormer (EvoDriveVLA): scores each visual token by its relevance to where the car will go.

One decoder layer deep-copied from the student's language model (`layer="first"` as in the public code,
`"last"` as in the paper) plus a learnable query appended after the sequence. The sequence is the
student's teacher-forced input embeddings (prompt + GT trajectory answer) with the image tokens replaced
by the frozen anchor encoder's visual tokens, so under causal attention the query sees the instruction,
the ego state and the GT future. Weight of visual token i: `w_i = sigmoid(Linear(h_i ⊙ q) / 2)`
(Linear hidden → 1, no bias), with h the layer outputs and q the query's output.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from drivedistill.models.vlm.core import VLMCore


class AnchorFormer(nn.Module):
    """weights(embeds (B, L, D), attention_mask (B, L), position_ids (3, B, L), image_mask (B, L)) → (B, T) in (0, 1)."""

    temperature = 2.0

    def __init__(self, core: VLMCore, layer: Literal["first", "last"] = "first") -> None:
        super().__init__()
        if layer not in ("first", "last"):
            raise ValueError(f"AnchorFormer layer={layer!r}: use 'first' (public code) or 'last' (paper)")
        src = core.decoder_layers[0 if layer == "first" else -1]
        self.layer = copy.deepcopy(src)
        self.rotary = copy.deepcopy(core.model.model.language_model.rotary_emb)
        d = core.hidden_size
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.ranker = nn.Linear(d, 1, bias=False)

    def forward(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        image_mask: torch.Tensor,
    ) -> torch.Tensor:
        return torch.sigmoid(self.scores(embeds, attention_mask, position_ids, image_mask))

    def scores(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        image_mask: torch.Tensor,
    ) -> torch.Tensor:
        """The weights before the sigmoid, Linear(h ⊙ q) / T, (B, T): losses built from the weights
        take `logsigmoid` of these instead of the log of a weight that may have underflowed to 0."""
        b, n, _ = embeds.shape
        x = torch.cat([embeds, self.query.expand(b, -1, -1).to(embeds)], dim=1)  # (B, L+1, D)
        q_pos = (
            position_ids.amax(dim=2, keepdim=True)
            .amax(dim=0, keepdim=True)
            .expand(position_ids.shape[0], b, 1)
            + 1
        )
        pos = torch.cat([position_ids, q_pos], dim=2)  # (3, B, L+1)
        keep = torch.cat([attention_mask.bool(), attention_mask.new_ones(b, 1).bool()], dim=1)
        causal = torch.ones(n + 1, n + 1, dtype=torch.bool, device=x.device).tril()
        allowed = causal[None] & keep[:, None, :]  # (B, L+1, L+1) query row sees every non-pad token
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(
            ~allowed, torch.finfo(x.dtype).min
        )
        h = self.layer(
            x, attention_mask=mask[:, None], position_ids=pos, position_embeddings=self.rotary(x, pos)
        )
        h = h[0] if isinstance(h, tuple) else h
        q = h[:, -1:]  # (B, 1, D)
        vis = h[:, :n][image_mask].view(b, -1, h.shape[-1])  # (B, T, D)
        return self.ranker(vis * q).squeeze(-1) / self.temperature  # type: ignore[no-any-return]
