"""Images → Qwen2.5-VL `pixel_values` and `image_grid_thw`, in torch (same layout as Qwen2VLImageProcessor).

Models built here use `preprocess_images`; a foreign checkpoint (the public Qwen2.5-VL release layout)
uses its own processor (`load_processor`, `transformers.AutoProcessor`) — see `VLMCore.image_inputs`.

Each image (3, H, W) in [0, 1] is resized to `image_hw`, normalised with the CLIP mean/std, repeated over
the temporal patch (a still image) and cut into patches ordered so that each 2×2 merge group is
contiguous — exactly the flattening of `transformers`' Qwen2VLImageProcessor (a test checks it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from drivedistill.models.vlm.config import VLMConfig

PROCESSOR_FILE = "preprocessor_config.json"  # the image processor's file in a Qwen2.5-VL release
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess_images(images: torch.Tensor, cfg: VLMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, 3, H, W) float in [0, 1] → pixel_values (N·P, 3·tp·p·p), image_grid_thw (N, 3) long.

    P = (H'/p)·(W'/p) patches per image after resizing to `cfg.image_hw` = (H', W'); the language model
    sees P / merge_size² tokens per image (`cfg.tokens_per_image`). Images are ordered as given: the
    sample-major order of the `<|image_pad|>` runs in the token sequence must match.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"preprocess_images: expected (N, 3, H, W) images in [0, 1], got {tuple(images.shape)}"
        )
    cfg.check_image_hw()
    n = images.shape[0]
    h, w = cfg.image_hw
    x = images.float()
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    tp, p, m = cfg.temporal_patch_size, cfg.patch_size, cfg.merge_size
    gh, gw = h // p, w // p
    x = x.unsqueeze(1).expand(n, tp, 3, h, w)  # (N, tp, C, H, W)
    x = x.reshape(n, 1, tp, 3, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)  # N, t, gh/m, gw/m, m, m, C, tp, p, p
    pixel_values = x.reshape(n * gh * gw, 3 * tp * p * p)
    grid = torch.tensor([[1, gh, gw]], dtype=torch.long, device=images.device).expand(n, 3).contiguous()
    return pixel_values, grid


def load_processor(path: str | Path) -> Any:
    """The checkpoint's own `AutoProcessor` (image processor + tokenizer + chat template), offline.

    A directory without `preprocessor_config.json` is an error naming it and the fix."""
    p = Path(path)
    if not (p / PROCESSOR_FILE).is_file():
        raise FileNotFoundError(
            f"load_processor: {p} has no {PROCESSOR_FILE}. A foreign Qwen2.5-VL checkpoint must be the complete "
            "release directory (config.json, preprocessor_config.json, tokenizer files, *.safetensors); copy the "
            "processor files next to the weights."
        )
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(p), local_files_only=True)


def processed_hw(processor: Any, camera_hw: tuple[int, int]) -> tuple[int, int]:
    """(H, W) [px] that `processor` resizes a `camera_hw` image to (its smart_resize with min/max pixels):
    read off the grid it produces for a blank image of that size, so the rule is the processor's own."""
    blank = torch.zeros(3, int(camera_hw[0]), int(camera_hw[1]), dtype=torch.uint8)
    grid = processor.image_processor(images=[blank], return_tensors="pt")["image_grid_thw"][0]
    patch = int(processor.image_processor.patch_size)
    return int(grid[1]) * patch, int(grid[2]) * patch
