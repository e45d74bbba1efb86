"""Latent action model (LatentVLA): two-stage VQ latent actions from camera frame sequences.

model = LatentActionModel(LatentActionConfig())
model.set_stage("env"); train(model)      # stage 1: environment latent, codebook then frozen
model.set_stage("ego"); train(model)      # stage 2: 16-code ego latent
codes = encode_latent_actions(model, dataset)   # token -> (12,) ego codes, for Batch.extras
"""

from __future__ import annotations

from drivedistill.models.latent_action.model import (
    LatentActionConfig,
    LatentActionModel,
    LatentActions,
    frame_sequence,
    motion_condition,
)
from drivedistill.models.latent_action.quantizer import VectorQuantizer, perplexity

__all__ = [
    "LatentActionConfig",
    "LatentActionModel",
    "LatentActions",
    "VectorQuantizer",
    "frame_sequence",
    "motion_condition",
    "perplexity",
]
