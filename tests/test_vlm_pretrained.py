"""Pretrained Qwen2.5-VL in every VLM role (issue #20 pt 1), on a tiny random checkpoint written in the
public release layout (config.json, preprocessor_config.json, Qwen2 tokenizer files with the special tokens
and chat template, sharded safetensors + index; no drivedistill file).

Each role's forward pass must equal transformers' own `AutoModelForImageTextToText` + `AutoProcessor` on
the same images and prompt, and the plan text / latent-action tokens must survive the real tokenizer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from drivedistill import registry
from drivedistill.models.students.vla import VLAConfig, VLAStudent
from drivedistill.models.teachers.oracle import OracleConfig, OracleTeacher
from drivedistill.models.teachers.vlm import VLMTeacher, VLMTeacherConfig, action_token
from drivedistill.models.vlm import VLMConfig, VLMCore, encode, format_plan
from drivedistill.models.vlm.tokenizer import IMAGE_PAD, VISION_END, VISION_START
from drivedistill.testing import random_batch

pytest.importorskip("transformers")
torch.set_num_threads(1)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
SPECIALS += ["<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (  # Qwen2.5-VL's layout of system/user/assistant turns with images
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CAMERA_HW = (64, 128)  # random_batch's camera, resized by the processor to 56×140 → 4×10 patches → 10 tokens


def _release_checkpoint(path: Path) -> Path:
    """A tiny random Qwen2.5-VL in the public release layout (built with transformers only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    corpus = [
        "You are a driving planner. Front camera, ego status, speed, command, waypoints (+01.50,-00.25)."
    ]
    bpe.train_from_iterator(
        corpus * 4,
        trainers.BpeTrainer(
            vocab_size=360, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )  # fmt: skip
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<|endoftext|>", eos_token="<|im_end|>",
        additional_special_tokens=[t for t in SPECIALS if t not in ("<|endoftext|>", "<|im_end|>")],
        chat_template=CHAT_TEMPLATE,
    )  # fmt: skip
    image = Qwen2VLImageProcessor(
        patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=28 * 28, max_pixels=112 * 224
    )
    video = Qwen2VLVideoProcessor(patch_size=14, temporal_patch_size=2, merge_size=2)
    processor = Qwen2_5_VLProcessor(
        image_processor=image, tokenizer=tok, video_processor=video, chat_template=CHAT_TEMPLATE
    )
    tid = tok.convert_tokens_to_ids
    cfg = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            "bos_token_id": tid("<|endoftext|>"), "eos_token_id": tid("<|im_end|>"),
            "pad_token_id": tid("<|endoftext|>"),
        },
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 14,
            "temporal_patch_size": 2, "spatial_merge_size": 2, "out_hidden_size": 64, "window_size": 112,
            "fullatt_block_indexes": [1],
        },
        image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"),
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.save_pretrained(path, max_shard_size="200KB")
    processor.save_pretrained(path)
    image.save_pretrained(path)  # preprocessor_config.json, as in the release
    tc = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**tc, "tokenizer_class": "Qwen2Tokenizer"}))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = _release_checkpoint(tmp_path_factory.mktemp("qwen25vl_release"))
    names = {p.name for p in path.iterdir()}
    assert {
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "model.safetensors.index.json",
    } <= names
    assert len([n for n in names if re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", n)]) > 1  # sharded
    assert not any("drivedistill" in n for n in names)
    return path


def _reference(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(str(path), local_files_only=True).eval()
    return processor, model


def _ref_logits(
    processor: Any, model: Any, texts: list[str], images: torch.Tensor
) -> tuple[Any, torch.Tensor]:
    """transformers' own pipeline: each run of image pads collapsed to one (the processor expands it),
    images as PIL (8-bit RGB), right padding."""
    from PIL import Image

    run = re.escape(VISION_START) + f"(?:{re.escape(IMAGE_PAD)})+" + re.escape(VISION_END)
    short = [re.sub(run, VISION_START + IMAGE_PAD + VISION_END, t) for t in texts]
    rgb = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pil = [Image.fromarray(a) for a in rgb]
    inputs = processor(text=short, images=pil, return_tensors="pt", padding=True, padding_side="right")
    with torch.no_grad():
        logits = model(**inputs).logits
    return inputs, logits


def _assert_same(enc: Any, logits: torch.Tensor, ref_inputs: Any, ref_logits: torch.Tensor) -> None:
    assert torch.equal(enc.input_ids, ref_inputs["input_ids"])
    mask = enc.attention_mask.bool()
    torch.testing.assert_close(logits[mask], ref_logits[mask], rtol=1e-4, atol=1e-4)


def test_core_uses_the_checkpoints_processor(ckpt: Path) -> None:
    from transformers import AutoProcessor

    core = VLMCore.load(ckpt, VLMConfig(image_hw=CAMERA_HW))
    processor = AutoProcessor.from_pretrained(str(ckpt), local_files_only=True)
    assert core.processor is not None and core.cfg.image_hw == (56, 140) and core.cfg.tokens_per_image == 10
    assert core.tokenizer.chat_template == CHAT_TEMPLATE
    images = random_batch(2).inputs.camera
    pv, grid = core.image_inputs(images)
    from PIL import Image

    rgb = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    ref = processor.image_processor(images=[Image.fromarray(a) for a in rgb], return_tensors="pt")
    torch.testing.assert_close(pv, ref["pixel_values"])
    assert torch.equal(grid, ref["image_grid_thw"])
    with pytest.raises(ValueError, match="vlm.image_hw"):  # a camera of another size than configured
        core.image_inputs(torch.rand(1, 3, 128, 256))


def test_vla_student_matches_transformers(ckpt: Path) -> None:
    student = registry.build(
        "student", "vla", VLAConfig(vlm=VLMConfig(pretrained_dir=str(ckpt), image_hw=CAMERA_HW))
    )
    assert isinstance(student, VLAStudent) and student.core.processor is not None
    batch = random_batch(2)
    enc, out = student.teacher_forced(batch.inputs, batch.privileged.trajectory)  # type: ignore[union-attr]
    processor, model = _reference(ckpt)
    texts = [t for t in student.core.tokenizer.batch_decode(enc.input_ids, skip_special_tokens=False)]
    texts = [t.replace("<|endoftext|>", "") for t in texts]  # right padding, re-added by the processor
    ref_inputs, ref_logits = _ref_logits(processor, model, texts, batch.inputs.camera)
    _assert_same(enc, out.logits, ref_inputs, ref_logits)
    # the plan text survives the real tokenizer
    plan = format_plan(np.array([[1.5, -0.25], [12.0, 3.75]]))
    ids = student.core.tokenizer.encode(plan, add_special_tokens=False)
    assert student.core.tokenizer.decode(ids) == plan


def test_oracle_matches_transformers(ckpt: Path) -> None:
    oracle = registry.build(
        "teacher", "oracle", OracleConfig(vlm=VLMConfig(pretrained_dir=str(ckpt), image_hw=CAMERA_HW))
    )
    assert isinstance(oracle, OracleTeacher)
    batch = random_batch(2)
    images = oracle.images(batch)  # current + 3 future frames per sample
    enc = oracle.encode(batch)
    out = oracle.core(enc, images)
    processor, model = _reference(ckpt)
    texts = [p + a + "<|im_end|>" for p, a in zip(oracle.prompts(batch), oracle.answers(batch))]
    ref_inputs, ref_logits = _ref_logits(processor, model, texts, images)
    _assert_same(enc, out.logits, ref_inputs, ref_logits)


def test_latent_vla_teacher_matches_transformers(ckpt: Path, tmp_path: Path) -> None:
    cfg = VLMTeacherConfig(pretrained=str(ckpt), vlm=VLMConfig(image_hw=CAMERA_HW))
    teacher = registry.build("teacher", "vlm", cfg)
    assert isinstance(teacher, VLMTeacher)
    batch = random_batch(2)
    codes = torch.tensor([[3, 9, 0, 15] * 3, [1, 2, 3, 4] * 3])
    enc = teacher.encode(batch.inputs, codes)
    logits = teacher.core(enc, batch.inputs.camera).logits
    processor, model = _reference(ckpt)
    # the reference gets the same 16 action tokens and the same (new, untrained) embedding rows
    tokens = [action_token(k) for k in range(cfg.num_codes)]
    processor.tokenizer.add_special_tokens(
        {"additional_special_tokens": tokens}, replace_extra_special_tokens=False
    )
    model.resize_token_embeddings(len(processor.tokenizer))
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(teacher.core.model.get_input_embeddings().weight)
        model.get_output_embeddings().weight.copy_(teacher.core.model.get_output_embeddings().weight)
    answers = ["".join(action_token(int(c)) for c in row) for row in codes.tolist()]
    texts = [p + a + "<|im_end|>" for p, a in zip(teacher.prompts(batch.inputs), answers)]
    ref_inputs, ref_logits = _ref_logits(processor, model, texts, batch.inputs.camera)
    _assert_same(enc, logits, ref_inputs, ref_logits)
    # saved and reloaded the way the recipe does (load_teacher: no camera size given) it gives the same logits
    from drivedistill.models.teachers.vlm import load_teacher

    teacher.save(tmp_path / "teacher")
    again = load_teacher(tmp_path / "teacher")
    assert again.core.processor is not None and again.core.cfg.image_hw == teacher.core.cfg.image_hw
    with torch.no_grad():
        torch.testing.assert_close(
            again.action_logits(batch.inputs, codes), teacher.action_logits(batch.inputs, codes)
        )
    # the latent-action tokens survive the real tokenizer: single ids, decode → the same text
    ids = teacher.core.tokenizer.encode(answers[0], add_special_tokens=False)
    assert ids == teacher.action_ids[codes[0]].tolist()
    assert teacher.core.tokenizer.decode(ids) == answers[0]


def test_vlm_ad_annotator_matches_transformers(ckpt: Path) -> None:
    from PIL import Image

    from drivedistill.annotate.transformers import TransformersAnnotator, TransformersConfig

    annotator = TransformersAnnotator(TransformersConfig(path=str(ckpt), max_new_tokens=4, device="cpu"))
    image = Image.fromarray((np.random.default_rng(0).random((64, 128, 3)) * 255).astype(np.uint8))
    processor, model = _reference(ckpt)
    answer = annotator.ask(image, "Front camera speed")
    from drivedistill.annotate.prompts import SYSTEM_PROMPT

    msgs = [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Front camera speed"}]},
    ]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert (
        answer == processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    )


def test_load_options_lora_checkpointing_dtype(ckpt: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    cfg = VLMConfig(pretrained_dir=str(ckpt), image_hw=CAMERA_HW, lora_rank=4, gradient_checkpointing=True,
                    dtype="float32", device="cpu")  # fmt: skip
    core = VLMCore.build(cfg)
    trainable = [n for n, p in core.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert core.model.model.language_model.gradient_checkpointing
    before = {n: p.detach().clone() for n, p in core.model.named_parameters() if "lora_B" in n}
    core.train()
    batch = random_batch(2)
    student_prompts = [
        "<|im_start|>user\n" + VISION_START + IMAGE_PAD * 10 + VISION_END + "speed<|im_end|>\n"
    ] * 2
    enc = encode(core.tokenizer, student_prompts, ["(+01.50,-00.25)"] * 2)
    out = core(enc, batch.inputs.camera)
    loss = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].flatten(0, 1), enc.labels[:, 1:].flatten(), ignore_index=-100
    )  # type: ignore[index]
    loss.backward()
    opt = torch.optim.SGD([p for p in core.model.parameters() if p.requires_grad], lr=1.0)
    opt.step()
    assert any(not torch.equal(before[n], p) for n, p in core.model.named_parameters() if "lora_B" in n)
    # save merges the adapters: the saved model (plain Qwen2.5-VL keys) reproduces the adapted logits
    core.eval()
    with torch.no_grad():
        adapted = core(enc, batch.inputs.camera).logits
    core.save(tmp_path / "saved")
    again = VLMCore.load(tmp_path / "saved", VLMConfig(image_hw=CAMERA_HW))
    assert again.processor is not None
    with torch.no_grad():
        torch.testing.assert_close(again(enc, batch.inputs.camera).logits, adapted, rtol=1e-4, atol=1e-4)
    bf16 = VLMCore.load(ckpt, VLMConfig(image_hw=CAMERA_HW, dtype="bfloat16"))
    assert bf16.model.dtype == torch.bfloat16


@pytest.mark.slow
def test_evodrive_chain_from_a_release_checkpoint(ckpt: Path, tmp_path: Path) -> None:
    """The EvoDrive recipe's path: perception pretraining on the foreign checkpoint, save, then the VLA
    student and the oracle start from that save without being told the camera size."""
    from drivedistill.models.perception import PerceptionConfig, linear_probe
    from drivedistill.recipes.evodrive import pretrain_perception
    from drivedistill.testing import random_scene

    core = VLMCore.build(VLMConfig(pretrained_dir=str(ckpt), image_hw=CAMERA_HW))
    train, val = [random_scene(i) for i in range(8)], [random_scene(100 + i) for i in range(4)]
    pc = PerceptionConfig(steps=2, batch_size=4, probe_steps=5)
    assert set(linear_probe(core, train, val, pc)) >= {"iou", "accuracy"}
    pretrain_perception(core, train, pc, seed=0, out_dir=tmp_path / "pre", device="cpu")
    core.save(tmp_path / "perception")
    batch = random_batch(2)
    student = registry.build(
        "student", "vla", VLAConfig(vlm=VLMConfig(pretrained_dir=str(tmp_path / "perception")))
    )
    assert student.core.processor is not None and student.core.cfg.image_hw == core.cfg.image_hw
    _, out = student.teacher_forced(batch.inputs, batch.privileged.trajectory)  # type: ignore[union-attr]
    assert torch.isfinite(out.logits).all()
    oracle = registry.build(
        "teacher", "oracle", OracleConfig(vlm=VLMConfig(pretrained_dir=str(tmp_path / "perception")))
    )
    assert torch.isfinite(oracle.losses(batch)["loss"])


def test_oracle_hint_channel_on_a_release_checkpoint(ckpt: Path, tmp_path: Path) -> None:
    """The oracle's hint channel on a foreign checkpoint (its own tokenizer): a small table over the plan
    alphabet, aligned with the answer tokens, emitted verbatim when it copies, saved beside the VLM. This
    fixture's BPE merges no punctuation, so its plan text is longer than our tokenizer's: the decoding
    budget is measured with the checkpoint's tokenizer (`answer_token_budget`), or the plan is cut off."""
    from drivedistill.data.dataset import collate
    from drivedistill.models.students.vla import answer_token_budget
    from drivedistill.models.vlm import IGNORE_INDEX
    from tests.test_oracle_hint import _copying, linear_speed_scene

    oracle = registry.build(
        "teacher", "oracle", OracleConfig(vlm=VLMConfig(pretrained_dir=str(ckpt), image_hw=CAMERA_HW))
    )
    assert isinstance(oracle, OracleTeacher) and oracle.hint is not None
    assert answer_token_budget(6, oracle.core.tokenizer) > answer_token_budget(6)
    assert oracle.hint.table.shape[0] < 64 < oracle.core.model.get_input_embeddings().num_embeddings
    batch = collate([linear_speed_scene(i, a, CAMERA_HW) for i, a in enumerate((-2.0, 1.0))])
    hints, enc = oracle.hint_ids(batch), oracle.encode(batch)
    assert hints is not None and enc.labels is not None
    for i in range(2):
        assert torch.equal(hints[i][hints[i] != IGNORE_INDEX], enc.labels[i][enc.labels[i] != IGNORE_INDEX])
    copy = _copying(oracle)
    assert copy.plan(batch, refine=False)[1] == oracle.answers(batch)
    copy.save(tmp_path / "oracle")
    loaded = OracleTeacher.load(tmp_path / "oracle")
    assert loaded.core.processor is not None and loaded.hint is not None
    torch.testing.assert_close(loaded.hint.table, copy.hint.table)  # type: ignore[union-attr]
    assert loaded.eval().plan(batch, refine=False)[1] == oracle.answers(batch)
