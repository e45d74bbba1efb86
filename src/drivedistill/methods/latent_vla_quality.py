"""Teacher-quality gate of LatentVLA: does the latent-action teacher know more than what it teaches?

    report = latent_teacher_quality(teacher, lam, train_ds, val_ds, student_ade_m=3.3)
    report["pass"]          # True only if every check below holds

Checks, all on the validation split (datasets carry the LAM codes as the extra `latent/ego_codes`):

- **code accuracy** — the teacher's teacher-forced accuracy over the K action tokens,
  p(code_j | camera, instruction, codes_<j) (`action_acc` of `VLMTeacher.losses`);
- **image-free baseline** — a small MLP that sees everything the teacher sees *except the image*:
  the position j, the previous codes (teacher-forced, as the teacher), the speed (when the teacher's
  prompt has it: `use_ego_status`) and the route command, trained on the training codes. The teacher must beat
  it by `margin_acc`, else its accuracy comes from the code statistics and the ego status, not the scene;
- **blank-image accuracy** — the same teacher with a black camera: it must lose at least `margin_acc`,
  else it does not read the image;
- **decoded trajectory error** — the teacher's free-running (greedy) codes decoded to a 4-s future by the
  LAM's trajectory decoder (`LatentActionModel.decode_trajectory`), ADE = mean L2 over the 8 future (x, y)
  poses [m] ("ade_8x0.5s" protocol, the one `plan_ade` computes for a student); it must be below the
  imitation student's ADE. Next to it: the LAM's own codes decoded (the detokenizer's floor; a large value
  means the decoding path, not the teacher, is broken) and the mean training trajectory (chance).

The result is a flat dict of floats plus `pass` and `failed` (names of the checks that failed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from drivedistill.models.latent_action.encode import EGO_CODES_KEY, position_majority_accuracy
from drivedistill.models.latent_action.model import LatentActionModel
from drivedistill.models.teachers.vlm import VLMTeacher
from drivedistill.types import Batch

ADE_PROTOCOL = "ade_8x0.5s"  # mean L2 [m] over the 8 future (x, y) poses at 0.5 … 4 s, ego frame at t = 0
NUM_COMMANDS = 8  # one-hot width of the route command in the image-free baseline (commands are < 8)


def _batches(dataset: Dataset[Any], batch_size: int, collate: Callable[[Sequence[Any]], Batch]) -> Any:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


def _collate_of(dataset: Any) -> Callable[[Sequence[Any]], Batch]:
    fn = getattr(dataset, "collate", None)
    if fn is None:
        raise TypeError(f"{type(dataset).__name__}: pass a dataset with a .collate method (SceneDataset)")
    return fn  # type: ignore[no-any-return]


@torch.no_grad()
def teacher_code_accuracy(
    teacher: VLMTeacher, dataset: Any, blank_image: bool = False, batch_size: int = 32
) -> float:
    """Teacher-forced accuracy among the K action tokens on `dataset` (which carries the LAM codes).

    blank_image: replace the camera by a black image (the "does it read the image" ablation).
    """
    was = teacher.training
    teacher.eval()
    device = teacher.action_ids.device
    hits, total = 0.0, 0
    for batch in _batches(dataset, batch_size, _collate_of(dataset)):
        batch = batch.to(device)
        if blank_image:
            batch.inputs.camera = torch.zeros_like(batch.inputs.camera)
        codes = batch.extras[teacher.cfg.codes_key].long()
        pred = teacher.action_logits(batch.inputs, codes).argmax(-1)
        hits += float((pred == codes).float().sum())
        total += codes.numel()
    teacher.train(was)
    return hits / max(total, 1)


@torch.no_grad()
def teacher_free_codes(teacher: VLMTeacher, dataset: Any, batch_size: int = 32) -> np.ndarray:
    """Greedy (free-running) code sequences (N, L) int64 of the teacher, in dataset order."""
    was = teacher.training
    teacher.eval()
    device = teacher.action_ids.device
    out = [
        teacher.features(batch.to(device).inputs).codes.cpu().numpy()
        for batch in _batches(dataset, batch_size, _collate_of(dataset))
    ]
    teacher.train(was)
    return np.concatenate(out).astype(np.int64)


def _conditioning(dataset: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """codes (N, L), ego status (N, 3), command (N,), futures (N, 8, 3) + valid (N, 8) of a dataset."""
    codes, status, command, fut, valid = [], [], [], [], []
    for batch in _batches(dataset, 64, _collate_of(dataset)):
        codes.append(batch.extras[EGO_CODES_KEY].long().numpy())
        status.append(batch.inputs.ego_status.float().numpy())
        command.append(batch.inputs.command.long().numpy())
        priv = batch.require_privileged("latent teacher quality (GT future)")
        fut.append(priv.trajectory.float().numpy())
        valid.append(priv.valid.numpy())
    return (
        np.concatenate(codes),
        np.concatenate(status),
        np.concatenate(command),
        np.concatenate(fut),
        np.concatenate(valid),
    )


def _image_free_features(
    codes: np.ndarray, status: np.ndarray, command: np.ndarray, num_codes: int
) -> torch.Tensor:
    """(N, L) codes → (N·L, F) rows: one-hot position, one-hot previous codes (zeros at j' ≥ j), scaled
    ego status (speed/10, accel/3, yaw rate·5), one-hot command."""
    n, length = codes.shape
    onehot = F.one_hot(torch.as_tensor(codes), num_codes).float()  # (N, L, K)
    prev = onehot[:, None].expand(n, length, length, num_codes).clone()  # row j sees codes j' < j
    mask = torch.tril(torch.ones(length, length), diagonal=-1)[None, :, :, None]
    prev = (prev * mask).flatten(2)  # (N, L, L·K)
    pos = torch.eye(length)[None].expand(n, -1, -1)
    st = torch.as_tensor(status, dtype=torch.float32) * torch.tensor([0.1, 1 / 3, 5.0])[: status.shape[1]]
    cmd = F.one_hot(torch.as_tensor(command).clamp(0, NUM_COMMANDS - 1), NUM_COMMANDS).float()
    rest = torch.cat([st, cmd], 1)[:, None].expand(-1, length, -1)
    return torch.cat([pos, prev, rest], -1).flatten(0, 1)


def image_free_accuracy(
    codes_train: np.ndarray,
    status_train: np.ndarray,
    command_train: np.ndarray,
    codes_val: np.ndarray,
    status_val: np.ndarray,
    command_val: np.ndarray,
    num_codes: int,
    steps: int = 400,
    hidden: int = 256,
    seed: int = 0,
) -> float:
    """Teacher-forced val accuracy of p(code_j | j, codes_<j, ego status, command): the teacher minus the
    image. An MLP trained full-batch with AdamW (deterministic given `seed`); codes (N, L) int, status
    (N, S ≤ 3) [m/s, m/s², rad/s] (the leading fields of the ego status; S = 0: none), command (N,) int."""
    gen = torch.Generator().manual_seed(seed)
    xtr = _image_free_features(codes_train, status_train, command_train, num_codes)
    ytr = torch.as_tensor(codes_train, dtype=torch.long).flatten()
    xva = _image_free_features(codes_val, status_val, command_val, num_codes)
    yva = torch.as_tensor(codes_val, dtype=torch.long).flatten()
    net = nn.Sequential(nn.Linear(xtr.shape[1], hidden), nn.GELU(), nn.Linear(hidden, num_codes))
    for p in net.parameters():
        nn.init.normal_(p, 0.0, 0.05, generator=gen) if p.ndim > 1 else nn.init.zeros_(p)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(net(xtr), ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((net(xva).argmax(-1) == yva).float().mean())


def trajectory_ade(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> float:
    """ADE [m] (protocol `ADE_PROTOCOL`): mean L2 of (x, y) over valid future steps; (N, 8, 2+) arrays."""
    err = np.linalg.norm(np.asarray(pred)[..., :2] - np.asarray(target)[..., :2], axis=-1)
    w = np.ones_like(err) if valid is None else np.asarray(valid, dtype=np.float64)
    return float((err * w).sum() / max(w.sum(), 1.0))


@torch.no_grad()
def plan_ade(planner: Callable[[Any], torch.Tensor], dataset: Any, batch_size: int = 32) -> float:
    """ADE (`ADE_PROTOCOL`) of a planner (AgentInputBatch → (B, 8, 3), e.g. `student.plan`) on a dataset:
    the imitation student's figure the decoded teacher codes are compared with."""
    preds, futs, valids = [], [], []
    for batch in _batches(dataset, batch_size, _collate_of(dataset)):
        priv = batch.require_privileged("plan_ade (GT future)")
        preds.append(planner(batch.inputs).float().cpu().numpy())
        futs.append(priv.trajectory.numpy())
        valids.append(priv.valid.numpy())
    return trajectory_ade(np.concatenate(preds), np.concatenate(futs), np.concatenate(valids))


@torch.no_grad()
def decode_codes(
    lam: LatentActionModel, codes: np.ndarray, ego_status: np.ndarray | None = None, batch_size: int = 256
) -> np.ndarray:
    """LAM detokenizer on code sequences (N, L) [+ the current ego status (N, 3) (speed, acceleration, yaw
    rate; AgentInput), needed by a LAM with `state_cond`] → futures (N, 8, 3) [m, m, rad], ego frame at
    t = 0."""
    was = lam.training
    lam.eval()
    device = next(lam.parameters()).device
    t = torch.as_tensor(codes, dtype=torch.long, device=device)
    st = None if ego_status is None else torch.as_tensor(ego_status, dtype=torch.float32, device=device)
    out = [
        lam.decode_trajectory(t[i : i + batch_size], None if st is None else st[i : i + batch_size])
        .cpu()
        .numpy()
        for i in range(0, len(t), batch_size)
    ]
    lam.train(was)
    return np.concatenate(out)


def latent_teacher_quality(
    teacher: VLMTeacher,
    lam: LatentActionModel,
    train: Any,
    val: Any,
    student_ade_m: float | None = None,
    margin_acc: float = 0.02,
    baseline_steps: int = 400,
) -> dict[str, Any]:
    """The LatentVLA teacher gate (module docstring). `train`/`val`: SceneDatasets (privileged part on)
    carrying the LAM codes as the extra `latent/ego_codes`; `student_ade_m`: the imitation student's val ADE
    [m] under `ADE_PROTOCOL` (`plan_ade(student.plan, val)`); None skips that check and fails the gate
    (nothing to compare with).

    Returns {"code_accuracy", "image_free_accuracy", "image_free_full_status_accuracy", "blank_image_accuracy", "position_majority_accuracy",
    "decoded_ade_m", "lam_decoded_ade_m", "mean_trajectory_ade_m", "student_ade_m", "ade_protocol",
    "train_samples", "val_samples", "checks": {name: bool}, "failed": [names], "pass": bool}.
    """
    codes_tr, st_tr, cmd_tr, fut_tr, _ = _conditioning(train)
    codes_va, st_va, cmd_va, fut_va, valid_va = _conditioning(val)
    k = teacher.cfg.num_codes
    seen = 1 if teacher.cfg.use_ego_status else 0  # the teacher's prompt holds the speed only
    acc = teacher_code_accuracy(teacher, val)
    blank = teacher_code_accuracy(teacher, val, blank_image=True)
    free = image_free_accuracy(
        codes_tr, st_tr[:, :seen], cmd_tr, codes_va, st_va[:, :seen], cmd_va, k, steps=baseline_steps
    )
    # for information: the same baseline with the whole ego status (acceleration and yaw rate too)
    free_full = image_free_accuracy(codes_tr, st_tr, cmd_tr, codes_va, st_va, cmd_va, k, steps=baseline_steps)
    decoded = trajectory_ade(decode_codes(lam, teacher_free_codes(teacher, val), st_va), fut_va, valid_va)
    lam_decoded = trajectory_ade(decode_codes(lam, codes_va, st_va), fut_va, valid_va)
    mean_traj = trajectory_ade(np.broadcast_to(fut_tr.mean(0), fut_va.shape), fut_va, valid_va)
    checks = {
        "beats_image_free": acc >= free + margin_acc,
        "reads_image": acc >= blank + margin_acc,
        "beats_student_ade": student_ade_m is not None and decoded < student_ade_m,
    }
    return {
        "code_accuracy": acc,
        "image_free_accuracy": free,
        "image_free_full_status_accuracy": free_full,
        "blank_image_accuracy": blank,
        "position_majority_accuracy": position_majority_accuracy(codes_tr, codes_va),
        "decoded_ade_m": decoded,
        "lam_decoded_ade_m": lam_decoded,
        "mean_trajectory_ade_m": mean_traj,
        "student_ade_m": student_ade_m,
        "ade_protocol": ADE_PROTOCOL,
        "margin_acc": margin_acc,
        "train_samples": len(codes_tr),
        "val_samples": len(codes_va),
        "checks": checks,
        "failed": [name for name, ok in checks.items() if not ok],
        "pass": all(checks.values()),
    }
