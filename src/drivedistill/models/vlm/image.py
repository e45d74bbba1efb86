"""Images → Qwen2.5-VL `pixel_values` and `image_grid_thw`, in torch (same layout as Qwen2VLImageProcessor).

Each image (3, H, W) in [0, 1] is resized to `image_hw`, normalised with the CLIP mean/std, repeated over
the temporal patch (a still image) and cut into patches ordered so that each 2×2 merge group is
contiguous — exactly the flattening of `transformers`' Qwen2VLImageProcessor (a test checks it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from drivedistill.models.vlm.config import VLMConfig

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
