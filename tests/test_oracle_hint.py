"""The EvoDrive oracle's hint channel: alignment with the answer tokens (teacher forcing and generation),
save/load, old oracles without it, and the student never getting it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from drivedistill import registry
from drivedistill.data.dataset import collate
from drivedistill.methods.evodrive import EvoDriveConfig
from drivedistill.models.students.vla import VLAConfig, VLAStudent
from drivedistill.models.teachers.oracle import ORACLE_CONFIG_FILE, OracleConfig, OracleTeacher
from drivedistill.models.vlm import IGNORE_INDEX, VLMConfig, encode
from drivedistill.models.vlm.hint import HINT_FILE, HintChannel, answer_input_positions
from drivedistill.types import Batch, Scene
from tests.test_evodrive import braking_scene

torch.set_num_threads(1)
SMALL = VLMConfig(
    image_hw=(32, 64), hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64, vision_depth=1,
    vision_hidden_size=32, vision_heads=2, vision_intermediate_size=64,
)  # fmt: skip


def linear_speed_scene(seed: int, accel: float, camera_hw: tuple[int, int] = (32, 64)) -> Scene:
    """A scene whose future speed is linear in time (test_evodrive's braking scene at any acceleration):
    the dead-reckoned path is exactly the GT, so the hint text equals the answer text. |accel| ≥ 15 m/s²
    makes a 3-digit offset (a longer answer)."""
    return braking_scene(seed, accel, camera_hw)


@pytest.fixture(scope="module")
def batch() -> Batch:
    """Rows of different answer lengths (a 3-digit offset in the second)."""
    b = collate([linear_speed_scene(0, -2.0), linear_speed_scene(1, -30.0), linear_speed_scene(2, 1.0)])
    return b


@pytest.fixture(scope="module")
def oracle() -> OracleTeacher:
    torch.manual_seed(0)
    return OracleTeacher(OracleConfig(vlm=SMALL, refine_prob=0.0))


def _copying(oracle: OracleTeacher, scale: float = 60.0) -> OracleTeacher:
    """The oracle with its hint table set to `scale` × the LM-head row of each alphabet token: the hint
    then dominates the logits, so a correctly aligned channel makes the model emit the hint verbatim."""
    copy = OracleTeacher(oracle.cfg)
    copy.load_state_dict(oracle.state_dict())
    assert copy.hint is not None
    with torch.no_grad():
        ids = torch.tensor(copy.hint.alphabet)
        copy.hint.table[1:] = scale * copy.core.model.lm_head.weight[ids]
    return copy.eval()


def test_hint_tokens_are_the_answer_tokens_when_the_path_is_the_gt(
    oracle: OracleTeacher, batch: Batch
) -> None:
    hints = oracle.hint_ids(batch)
    assert hints is not None
    answers = oracle.answers(batch)
    assert len({len(a) for a in answers}) == 2  # rows of different lengths
    enc = oracle.encode(batch)
    assert enc.labels is not None
    pos, valid = answer_input_positions(enc)
    lengths = valid.sum(1)
    assert lengths[1] > lengths[0]
    for i in range(3):
        n = int(lengths[i])
        ans = enc.labels[i][enc.labels[i] != IGNORE_INDEX]
        assert torch.equal(hints[i][hints[i] != IGNORE_INDEX], ans)  # same tokens, same count
        # the input at pos[t] predicts answer token t: the token after it is answer token t
        assert torch.equal(enc.input_ids[i, pos[i, :n] + 1], hints[i, :n])
    assert oracle.hint is not None
    with torch.no_grad():
        oracle.hint.table.normal_()
        add = oracle.hint.teacher_forced(enc, hints)
        oracle.hint.table.zero_()
    placed = add.abs().sum(-1) > 0
    for i in range(3):
        n = int(lengths[i])
        assert placed[i].sum() == n and placed[i, pos[i, :n]].all()


def test_a_copying_channel_makes_the_oracle_emit_its_path(oracle: OracleTeacher, batch: Batch) -> None:
    """Teacher forcing (right padding) and greedy generation (left padding, coarse and refined pass)
    both place hint token t where answer token t is predicted: with a channel that copies, the argmax
    answer and the generated text are the path — for rows of different lengths."""
    answers = oracle.answers(batch)
    plain = oracle.eval().plan(batch, refine=False)[1]
    assert plain != answers  # control: the untrained model does not write them by itself
    copy = _copying(oracle)
    enc = copy.encode(batch)
    with torch.no_grad():
        logits = copy.teacher_forced(enc, copy.images(batch), copy.hint_ids(batch)).logits
    assert enc.labels is not None
    pred = logits[:, :-1].argmax(-1)
    target = enc.labels[:, 1:]
    assert torch.equal(pred[target != IGNORE_INDEX], target[target != IGNORE_INDEX])
    for refine in (False, True):
        xy, texts, failed = copy.plan(batch, refine=refine)
        assert texts == answers and not failed.any()
    assert batch.privileged is not None
    torch.testing.assert_close(xy, batch.privileged.trajectory[:, :6, :2], atol=0.006, rtol=0)


def test_generation_refuses_a_call_pattern_it_cannot_align(oracle: OracleTeacher, batch: Batch) -> None:
    from drivedistill.models.vlm.core import _StepAdder

    enc = encode(oracle.core.tokenizer, oracle.prompts(batch), padding_side="left")
    adder = _StepAdder(torch.zeros(3, 4, 32), enc.input_ids.shape[1])
    emb = torch.zeros(3, enc.input_ids.shape[1], 32)
    assert torch.equal(adder(torch.nn.Identity(), (), emb), emb)
    with pytest.raises(RuntimeError, match="KV-cached"):
        adder(torch.nn.Identity(), (), emb)  # a second full-length call: no cache


def test_hint_channel_save_load_and_old_oracles(oracle: OracleTeacher, batch: Batch, tmp_path: Path) -> None:
    copy = _copying(oracle, scale=0.5)
    copy.save(tmp_path / "o")
    assert (tmp_path / "o" / HINT_FILE).exists()
    loaded = OracleTeacher.load(tmp_path / "o").eval()
    assert loaded.hint is not None and loaded.cfg.hint
    assert loaded.hint.alphabet == copy.hint.alphabet  # type: ignore[union-attr]
    torch.testing.assert_close(loaded.hint.table, copy.hint.table)  # type: ignore[union-attr]
    enc = copy.encode(batch)
    with torch.no_grad():
        a = copy.teacher_forced(enc, copy.images(batch), copy.hint_ids(batch)).logits
        b = loaded.teacher_forced(enc, loaded.images(batch), loaded.hint_ids(batch)).logits
    torch.testing.assert_close(a, b)
    # an oracle saved before the channel existed: no "hint" in its config, no channel file
    raw = json.loads((tmp_path / "o" / ORACLE_CONFIG_FILE).read_text())
    (tmp_path / "o" / ORACLE_CONFIG_FILE).write_text(
        json.dumps({k: v for k, v in raw.items() if k != "hint"})
    )
    (tmp_path / "o" / HINT_FILE).rename(tmp_path / "hint.bak")
    old = OracleTeacher.load(tmp_path / "o", OracleConfig(hint=True))
    assert old.hint is None and not old.cfg.hint and old.hint_ids(batch) is None
    with torch.no_grad():
        c = old.teacher_forced(enc, old.images(batch), None).logits
        d = copy.core(enc, copy.images(batch)).logits
    torch.testing.assert_close(c, d)  # behaves as the VLM alone
    (tmp_path / "o" / ORACLE_CONFIG_FILE).write_text(json.dumps(raw))  # says hint=true, file missing
    with pytest.raises(FileNotFoundError, match=HINT_FILE):
        OracleTeacher.load(tmp_path / "o")
    (tmp_path / "o" / HINT_FILE).write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        OracleTeacher.load(tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="no hint channel"):
        HintChannel.load(tmp_path)


def test_the_student_never_gets_the_hint(oracle: OracleTeacher, batch: Batch) -> None:
    """The hint is built from the privileged future ego status; the VLA student (alone or inside
    EvoDrive) has no channel, and its loss does not move when the future ego status does, while the
    oracle's logits do."""
    torch.manual_seed(0)
    student = VLAStudent(VLAConfig(vlm=SMALL))
    assert not any(isinstance(m, HintChannel) for m in student.modules())
    method = registry.build(
        "method", "evodrive", EvoDriveConfig(trajectory_kd=False, visual_kd=False), student=student
    )
    assert not any(isinstance(m, HintChannel) for m in method.modules())
    assert batch.privileged is not None
    other = dataclasses.replace(
        batch,
        privileged=dataclasses.replace(
            batch.privileged, future_ego_status=batch.privileged.future_ego_status + 1
        ),
    )
    with torch.no_grad():
        torch.testing.assert_close(method.losses(batch)["ce"], method.losses(other)["ce"])
    copy = _copying(oracle, scale=1.0)
    assert not torch.equal(copy.hint_ids(batch), copy.hint_ids(other))  # type: ignore[arg-type]
    with pytest.raises(Exception, match="privileged"):
        copy.hint_ids(dataclasses.replace(batch, privileged=None))
