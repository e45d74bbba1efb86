"""TransFuser's auxiliary BEV semantic loss (`student.bev_semantic_weight`): a training target only — the
head decodes the scene tokens in training mode, every method's imitation term adds its loss, inference
and the inputs are untouched, and at weight 0 (the default) nothing changes, stage keys included."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from drivedistill import registry
from drivedistill.config import to_dict
from drivedistill.methods.imitation import ImitationConfig, imitation_losses
from drivedistill.models.students.ipad import IpadConfig
from drivedistill.models.students.transfuser import TransfuserConfig
from drivedistill.testing import random_batch
from drivedistill.train.checkpoint import without_legacy_fields

SMALL = {"bev_channels": 3, "hidden_dim": 32, "num_heads": 2, "num_fusion_layers": 1}


def _tf(weight: float) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = TransfuserConfig(**SMALL, num_decoder_layers=1, bev_semantic_weight=weight, bev_semantic_grid=4)
    return registry.build("student", "transfuser", cfg)  # type: ignore[no-any-return]


def test_the_head_trains_through_the_imitation_term_and_inference_skips_it() -> None:
    student, batch = _tf(0.5), random_batch(2)
    out = student(batch.inputs)
    assert out.features["bev_semantic_logits"].shape == (2, 3, 4, 4)
    losses = imitation_losses(out, batch, ImitationConfig(), student)
    assert float(losses["loss"]) == pytest.approx(float(losses["imitation"] + 0.5 * losses["bev_semantic"]))
    losses["loss"].backward()
    head = student.encoder.bev_semantic
    assert head is not None and all(p.grad is not None for p in head.parameters())
    student.eval()  # planning (and the ONNX export) never computes it
    assert "bev_semantic_logits" not in student(batch.inputs).features


def test_ipad_reads_the_same_target() -> None:
    cfg = IpadConfig(**SMALL, num_proposals=3, num_iterations=1, bev_semantic_weight=1.0, bev_semantic_grid=4)
    student, batch = registry.build("student", "ipad", cfg), random_batch(2)
    losses = imitation_losses(student(batch.inputs), batch, ImitationConfig(), student)
    assert "bev_semantic" in losses and "proposal" in losses


def test_weight_zero_is_the_student_of_before() -> None:
    student, batch = _tf(0.0), random_batch(2)
    assert student.encoder.bev_semantic is None
    assert not any("bev_semantic" in name for name in student.state_dict())  # old checkpoints load
    out = student(batch.inputs)
    assert set(imitation_losses(out, batch, ImitationConfig(), student)) == {"loss", "imitation"}
    # later-added fields at their default leave the stage key of finished runs as it was
    section = without_legacy_fields(to_dict(TransfuserConfig(**SMALL)))
    assert not {"bev_semantic_weight", "bev_semantic_grid"} & set(section)
    on = without_legacy_fields(to_dict(TransfuserConfig(**SMALL, bev_semantic_weight=1.0)))
    assert on["bev_semantic_weight"] == 1.0


def test_a_store_without_the_labelled_bev_is_named() -> None:
    student, batch = _tf(1.0), random_batch(2)
    assert batch.privileged is not None
    batch = dataclasses.replace(batch, privileged=dataclasses.replace(batch.privileged, labelled_bev=None))
    with pytest.raises(ValueError, match="bev_semantic_weight=0"):
        imitation_losses(student(batch.inputs), batch, ImitationConfig(), student)
