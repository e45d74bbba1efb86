"""VLM-AD method: heads dropped at export, ablation switches, the loss falls on a tiny batch, extras."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from drivedistill import registry
from drivedistill.annotate.cache import AnnotationCache
from drivedistill.annotate.cli import annotate_store
from drivedistill.annotate.rules import RulesAnnotator, RulesConfig
from drivedistill.data.dataset import collate
from drivedistill.methods.base import MethodContext
from drivedistill.methods.vlm_ad import LABELS, MASK, TEXT_EMB, VlmAdConfig, vlm_ad_extras
from drivedistill.testing import random_scene
from drivedistill.types import Batch, Scene, ValidationError

E = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """Tiny models: a second thread only adds contention on a shared 2-core host (≈10× slower).
    A thread count CI asks for (DRIVEDISTILL_TEST_THREADS, tests/conftest.py) wins."""
    before = torch.get_num_threads()
    if not os.environ.get("DRIVEDISTILL_TEST_THREADS"):
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _student(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = registry.get("student", "ego_mlp").config_cls(hidden_dim=32, num_layers=2)  # type: ignore[misc]
    return registry.build("student", "ego_mlp", cfg)


def _method(questions: str = "both", **kw: object):  # type: ignore[no-untyped-def]
    cfg = VlmAdConfig(questions=questions, text_dim=E, hidden_dim=32, dropout=0.0, **kw)  # type: ignore[arg-type]
    return registry.build("method", "vlm_ad", cfg, student=_student(), context=MethodContext())


def _batch(b: int = 8) -> Batch:
    g = torch.Generator().manual_seed(0)
    batch = collate([random_scene(i) for i in range(b)])
    batch.extras = {
        TEXT_EMB: torch.randn(b, 3, E, generator=g),
        LABELS: torch.stack([torch.randint(0, n, (b,), generator=g) for n in (4, 4, 3)], 1),
        MASK: torch.ones(b),
    }
    return batch


def test_deployable_has_exactly_the_baseline_student_keys() -> None:
    method = _method()
    baseline = registry.build("method", "imitation", None, student=_student(), context=MethodContext())
    deployed = method.deployable()
    assert set(deployed.state_dict()) == set(baseline.deployable().state_dict())
    assert len(method.state_dict()) > len(deployed.state_dict())  # the heads exist, but only in the method
    assert not any("align" in k or "action" in k for k in deployed.state_dict())


@pytest.mark.parametrize(
    ("questions", "keys"), [("q1", {"align"}), ("q2", {"action"}), ("both", {"align", "action"})]
)
def test_ablation_switches_the_heads(questions: str, keys: set[str]) -> None:
    losses = _method(questions).losses(_batch())
    assert set(losses) == {"loss", "imitation"} | keys
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("alignment", ["feature_kl", "contrastive"])
def test_loss_decreases_on_a_tiny_batch(alignment: str) -> None:
    """Overfitting one batch drives every term well below its start. The bound holds on any CPU and thread
    count: measured (seeds 0–2, ATEN_CPU_CAPABILITY default/avx2, AMD EPYC) after 100 steps the total is at
    most 0.062× its start and the best of the last 20 steps of each head at most 0.29× (docs/LOG.md); the
    old check (40 steps, final value < 0.6×) failed on AVX2 (action 0.67×). The best of a window, not the
    last step, because Adam on 8 samples makes single-step spikes whose timing depends on rounding."""
    method = _method(alignment=alignment)
    batch = _batch()
    opt = torch.optim.AdamW(method.parameters(), lr=3e-3)
    with torch.no_grad():
        first = {k: float(v) for k, v in method.losses(batch).items()}
    best = {k: float("inf") for k in ("loss", "align", "action")}
    for step in range(100):
        opt.zero_grad()
        losses = method.losses(batch)
        losses["loss"].backward()
        opt.step()
        if step >= 80:
            best = {k: min(best[k], float(losses[k])) for k in best}
    with torch.no_grad():
        last = {k: float(v) for k, v in method.losses(batch).items()}
    assert last["loss"] < 0.25 * first["loss"], (first, last)
    for k in ("align", "action"):
        assert best[k] < 0.6 * first[k], (k, first[k], best[k])


def test_masked_samples_do_not_train_the_heads() -> None:
    method = _method()
    batch = _batch()
    batch.extras[MASK] = torch.zeros(8)
    losses = method.losses(batch)
    assert float(losses["align"]) == 0.0 and float(losses["action"]) == 0.0


def test_missing_extras_and_wrong_dim_fail_loudly() -> None:
    batch = _batch()
    del batch.extras[TEXT_EMB]
    with pytest.raises(ValidationError, match="vlm_ad_extras"):
        _method().losses(batch)
    batch = _batch()
    batch.extras[TEXT_EMB] = torch.randn(8, 3, E + 1)
    with pytest.raises(ValidationError, match="text_dim=17"):
        _method().losses(batch)


class HashEncoder:
    """Deterministic stand-in for the text encoder (the real one is tested in test_vlm_ad_text_encoder)."""

    dim = E

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=E) for t in texts]).astype(
            np.float32
        )


def test_extras_from_the_cache(tmp_path: Path) -> None:
    scenes: dict[str, Scene] = {f"t{i}": random_scene(i, token=f"t{i}") for i in range(4)}

    class Src:
        def tokens(self, split: str | None = None) -> list[str]:
            return list(scenes)

        def load(self, token: str, with_privileged: bool = True) -> Scene:
            return scenes[token]

        def sample_hash(self, token: str) -> str:
            return "h" + token

    key = annotate_store(Src(), RulesAnnotator(RulesConfig()), tmp_path).key
    cache = AnnotationCache(tmp_path)
    tokens = list(scenes)
    extras = vlm_ad_extras(tokens, ["h" + t for t in tokens], cache, key, HashEncoder())  # type: ignore[arg-type]
    assert extras[TEXT_EMB]["t0"].shape == (3, E) and extras[LABELS]["t0"].dtype == np.int64
    batch = collate(list(scenes.values()), extras)
    assert batch.extras[TEXT_EMB].shape == (4, 3, E) and batch.extras[MASK].tolist() == [1.0] * 4
    assert torch.isfinite(_method().losses(batch)["loss"])
    with pytest.raises(KeyError, match="drivedistill annotate"):
        vlm_ad_extras(["zz"], ["hzz"], cache, key, HashEncoder())  # type: ignore[arg-type]
