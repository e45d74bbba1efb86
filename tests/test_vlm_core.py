"""Shared tiny-VLM core: tokenizer, image preprocessing, prompts/labels, forward/backward/generate, save/load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from drivedistill.models.vlm import (
    IGNORE_INDEX,
    SPECIAL_TOKENS,
    VLMConfig,
    VLMCore,
    build_tokenizer,
    chat_prompt,
    encode,
    format_plan,
    load_tokenizer,
    parse_plan,
    preprocess_images,
    user_text,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def core() -> VLMCore:
    torch.manual_seed(0)
    return VLMCore.build(VLMConfig(image_hw=(64, 128)))


def _prompts(core: VLMCore, n: int) -> list[str]:
    out = []
    for i in range(n):
        u = user_text(np.zeros((4, 3)), np.array([5.0 + i, 0.1, 0.0]), i % 3, 6, core.cfg.tokens_per_image)
        out.append(chat_prompt(u, draft=None if i % 2 == 0 else format_plan(np.ones((6, 2)))))
    return out


def test_tokenizer_round_trip_and_special_tokens(tmp_path: Path) -> None:
    tok = build_tokenizer(400)
    text = chat_prompt("Command: go straight.") + "[(12.34,-0.56),(1.00,0.00)]<|im_end|>"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    for t in SPECIAL_TOKENS:
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    # digits are single tokens: the same text shape has the same length whatever the digits
    assert len(tok.encode("[(12.34,-0.56)]")) == len(tok.encode("[(98.76,-5.43)]"))
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode(text, add_special_tokens=False) == ids
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json"):
        load_tokenizer(tmp_path / "missing")


def test_parse_plan_is_strict() -> None:
    xy = np.array([[1.234, -0.5], [12.0, -0.001]])
    text = format_plan(xy)
    assert text == "[(+01.23,-00.50),(+12.00,+00.00)]"  # fixed width, signed, no negative zero
    parsed = parse_plan(text, 2)
    assert parsed is not None
    np.testing.assert_allclose(parsed, np.array([[1.23, -0.5], [12.0, 0.0]]), atol=1e-6)
    assert parse_plan(text, 3) is None
    assert parse_plan("[(+01.2,+00.00),(+02.00,+00.25)]", 2) is None
    assert parse_plan("[(1.20,+00.00),(+02.00,+00.25)]", 2) is None  # missing sign / leading zero
    assert parse_plan("[(+01.20,+00.00),(+02.00,+00.25),]", 2) is None
    assert parse_plan(text + " ok", 2) is None
    assert parse_plan("", 2) is None


def test_plan_tokenisation_is_fixed_length() -> None:
    """Every 6-pose plan (|x|, |y| < 100 m) is the same token sequence shape: one token per digit."""
    tok = build_tokenizer()
    rng = np.random.default_rng(1)
    plans = [
        np.zeros((6, 2)),
        -np.full((6, 2), 99.99),
        *(rng.normal(0, 20, (6, 2)).clip(-99, 99) for _ in range(8)),
    ]
    ids = [tok.encode(format_plan(xy), add_special_tokens=False) for xy in plans]
    assert {len(i) for i in ids} == {2 + 6 * 12 - 1}
    decoded = [tok.decode([t]) for t in ids[1]]
    assert decoded[1:6] == ["9", "9", ".", "9", "9"]


def test_preprocess_matches_qwen_image_processor() -> None:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    cfg = VLMConfig(image_hw=(64, 128))
    img = np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    ref = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, do_resize=False)(
        images=[img], return_tensors="pt"
    )
    pv, grid = preprocess_images(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0, cfg)
    assert grid.tolist() == ref["image_grid_thw"].tolist()
    torch.testing.assert_close(pv, ref["pixel_values"].float(), atol=1e-4, rtol=1e-4)


def test_forward_backward_labels_and_hf_equivalence(core: VLMCore) -> None:
    prompts = _prompts(core, 2)
    answers = [format_plan(np.ones((6, 2))), format_plan(np.zeros((6, 2)))]
    enc = encode(core.tokenizer, prompts, answers)
    assert enc.labels is not None
    n_answer = [len(core.tokenizer.encode(a + "<|im_end|>", add_special_tokens=False)) for a in answers]
    assert (enc.labels != IGNORE_INDEX).sum(1).tolist() == n_answer
    assert int(enc.mm_token_type_ids.sum()) == 2 * core.cfg.tokens_per_image
    images = torch.rand(2, 3, 64, 128)
    out = core(enc, images)
    assert out.logits.shape[:2] == enc.input_ids.shape and out.hidden.shape[-1] == core.hidden_size
    pv, grid = core.image_inputs(images)
    ref = core.model(
        input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=pv, image_grid_thw=grid,
        mm_token_type_ids=enc.mm_token_type_ids,
    )  # fmt: skip
    torch.testing.assert_close(out.logits, ref.logits)
    loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), enc.labels[:, 1:].flatten())
    loss.backward()
    grads = [p.grad for p in core.visual.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads if g is not None)
    core.zero_grad()
    with pytest.raises(ValueError, match="tokens_per_image"):
        core(enc, torch.rand(3, 3, 64, 128))


def test_answer_ce_matches_hf_shifted_loss(core: VLMCore) -> None:
    """Regression for label alignment: logits at t predict the label at t+1, as in HF's own loss."""
    from drivedistill.methods.vla_sft import answer_ce

    prompts = _prompts(core, 2)
    enc = encode(core.tokenizer, prompts, [format_plan(np.ones((6, 2))), format_plan(np.zeros((6, 2)))])
    assert enc.labels is not None
    images = torch.rand(2, 3, 64, 128)
    pv, grid = core.image_inputs(images)
    with torch.no_grad():
        out = core(enc, images)
        ref = core.model(
            input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=pv, image_grid_thw=grid,
            mm_token_type_ids=enc.mm_token_type_ids, labels=enc.labels,
        )  # fmt: skip
    torch.testing.assert_close(answer_ce(out.logits, enc.labels), ref.loss)
    unshifted = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), enc.labels.flatten())
    assert not torch.allclose(unshifted, ref.loss)
    first = int((enc.labels[0] != IGNORE_INDEX).nonzero()[0])  # labels start at the first answer token
    assert first == len(core.tokenizer.encode(prompts[0], add_special_tokens=False))


def test_greedy_generation_equals_teacher_forced_argmax(core: VLMCore) -> None:
    """Decoding sees the same positions/masks as training: generated ids = argmax of a teacher-forced pass."""
    from drivedistill.models.vlm import Encoded

    prompts = _prompts(core, 2)  # different lengths → left padding
    images = torch.rand(2, 3, 64, 128)
    enc = encode(core.tokenizer, prompts, padding_side="left")
    pv, grid = core.image_inputs(images)
    model: Any = core.model
    seqs = model.generate(
        input_ids=enc.input_ids, attention_mask=enc.attention_mask, mm_token_type_ids=enc.mm_token_type_ids,
        pixel_values=pv, image_grid_thw=grid, max_new_tokens=6, do_sample=False, eos_token_id=None,
        pad_token_id=core.tokenizer.pad_token_id,
    )  # fmt: skip
    n = enc.input_ids.shape[1]
    for i in range(2):
        keep = enc.attention_mask[i].bool()
        ids = torch.cat([enc.input_ids[i, keep], seqs[i, n:]])[None]
        full = Encoded(ids, torch.ones_like(ids), None, (ids == core.model.config.image_token_id).int())
        with torch.no_grad():
            logits = core(full, images[i : i + 1]).logits[0]
        p = int(keep.sum())
        assert logits[p - 1 : -1].argmax(-1).tolist() == seqs[i, n:].tolist()


def test_generate_batched_equals_single(core: VLMCore) -> None:
    prompts = _prompts(core, 2)  # different lengths (one has a draft) → left padding matters
    images = torch.rand(2, 3, 64, 128)
    batched = core.generate(encode(core.tokenizer, prompts, padding_side="left"), images, 8)
    single = [
        core.generate(encode(core.tokenizer, [p], padding_side="left"), images[i : i + 1], 8)[0]
        for i, p in enumerate(prompts)
    ]
    assert batched == single
    with pytest.raises(ValueError, match="left-padded"):
        core.generate(encode(core.tokenizer, prompts), images, 2)


def test_save_load_and_add_tokens(core: VLMCore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pretrained_dir"):
        VLMCore.build(VLMConfig(pretrained_dir=str(tmp_path / "nope")))
    core.save(tmp_path / "vlm")
    again = VLMCore.build(VLMConfig(pretrained_dir=str(tmp_path / "vlm")))
    assert again.cfg.image_hw == core.cfg.image_hw
    enc = encode(core.tokenizer, _prompts(core, 1), [format_plan(np.ones((1, 2)))])
    images = torch.rand(1, 3, 64, 128)
    torch.testing.assert_close(again(enc, images).logits, core(enc, images).logits)
    before = len(again.tokenizer)
    ids = again.add_tokens(["<|act_0|>", "<|act_1|>"])
    assert ids == [before, before + 1]
    assert again.model.get_input_embeddings().weight.shape[0] == before + 2  # type: ignore[index]
    assert again.model.lm_head.weight.shape[0] == before + 2
    assert len(again.tokenizer.encode("<|act_1|>", add_special_tokens=False)) == 1
