"""The VLM's image: the future trajectory projected with the world camera and drawn in red."""

from __future__ import annotations

import dataclasses

import numpy as np

from drivedistill.annotate.render import png_data_url, render_plan
from drivedistill.testing import random_scene


def _red_columns(image: np.ndarray) -> np.ndarray:
    red = (image[..., 0] == 255) & (image[..., 1] == 0) & (image[..., 2] == 0)
    return np.nonzero(red)[1]


def test_plan_is_drawn_in_red_where_it_goes() -> None:
    scene = random_scene(0, camera_hw=(128, 256))
    scene.agent_input.camera[:] = 90  # grey: no red in the input
    assert scene.privileged is not None
    t = np.arange(1, 9) * 0.5
    left = np.stack([8 * t, 0.4 * (8 * t) ** 2 / 10, np.zeros_like(t)], -1).astype(np.float32)
    for traj, side in ((left, -1), (left * np.array([1, -1, 1], np.float32), 1)):
        s = dataclasses.replace(
            scene, privileged=dataclasses.replace(scene.privileged, future_trajectory=traj)
        )
        image = render_plan(s, scale=2)
        assert image.shape == (256, 512, 3)
        cols = _red_columns(image)
        assert len(cols) > 50
        assert np.sign(np.median(cols) - 256) == side  # a path bending left is drawn left of centre
    assert png_data_url(image).startswith("data:image/png;base64,iVBOR")
