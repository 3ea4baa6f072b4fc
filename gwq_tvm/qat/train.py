"""Fine-tune a :class:`~gwq_tvm.qat.model.QATModel` on labelled data, with checkpoint/resume.

The loop is deliberately plain: Adam with two parameter groups (weights and
biases; the quantizer's mantissas, exponents and weight-scale exponents), a
cosine learning-rate schedule over the whole run, cross-entropy on the labels
plus (optionally) distillation from the float model's logits.  The data
order of epoch ``e`` comes from ``seed + e``, so an interrupted run resumed
from its last checkpoint continues exactly where an uninterrupted run would be.

Checkpoints (``<work_dir>/checkpoint.pt``) are written atomically after every
epoch: an interrupt loses at most the epoch in progress.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_path
from ..errors import CalibrationDataError, ConfigError, GwqError
from .model import QATModel, float_forward

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one QAT run (validated on construction).

    Parameters
    ----------
    epochs : int
        Passes over the training data.
    batch_size : int
    lr : float
        Peak Adam learning rate of the weights and biases.
    scale_lr : float
        Peak Adam learning rate of the scales, a relative (log2) step: mantissas,
        exponents and weight scales take it as it is, adapter hidden steps
        ``scale_lr`` times their starting size (:meth:`QATModel.scale_param_groups`).
    distill : float
        Weight in [0, 1] of the distillation loss (KL to the float model's softmax); the
        label cross-entropy gets ``1 - distill``.
    seed : int
        Seeds the data order (epoch ``e`` uses ``seed + e``).
    threads : int, optional
        torch intra-op threads (default: leave torch's setting).
    """

    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    scale_lr: float = 2e-3
    distill: float = 0.5
    seed: int = 0
    threads: int | None = None

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer; got {v!r}")
        for name in ("lr", "scale_lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ConfigError(f"{name} must be a number in (0, 1); got {v!r}")
        if isinstance(self.distill, bool) or not isinstance(self.distill, (int, float)) or not 0 <= self.distill <= 1:
            raise ConfigError(f"distill must be in [0, 1]; got {self.distill!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer; got {self.threads!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_training_data(images, labels, input_shape, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate labelled training data; returns ``(float32 images, int64 labels)``.

    Raises
    ------
    CalibrationDataError
        Empty, non-finite, mis-shaped data, missing labels or labels outside ``[0, num_classes)``.
    """
    if labels is None:
        raise CalibrationDataError("training data needs labels (an .npz with 'images' and 'labels')")
    x = np.asarray(images)
    y = np.asarray(labels)
    if x.size == 0 or len(x) == 0:
        raise CalibrationDataError("training data is empty")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape[1:]):
        raise CalibrationDataError(f"training images have shape {tuple(x.shape[1:])}, the model takes {tuple(input_shape[1:])}")
    if not np.issubdtype(x.dtype, np.number):
        raise CalibrationDataError(f"training images must be numeric; got {x.dtype}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise CalibrationDataError("training images contain NaN or infinite values")
    if y.ndim != 1 or len(y) != len(x):
        raise CalibrationDataError(f"{len(x)} training images but labels of shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
        raise CalibrationDataError(f"labels must be integers in [0, {num_classes}); got range [{y.min()}, {y.max()}]")
    return x, y.astype(np.int64)


def _save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


#: the parametrization and Adam groups a checkpoint belongs to (2: free weight scales as log2 ratios, one group per
#: adapter hidden step); a checkpoint of another layout is refused as "other training settings", not resumed wrongly
OPTIMIZER_LAYOUT = 2


def _param_groups(model: QATModel, cfg: TrainConfig):
    """Weights, biases and adapter layers at ``cfg.lr``; every scale at a relative step of ``cfg.scale_lr``
    (:meth:`~gwq_tvm.qat.model.QATModel.scale_param_groups`)."""
    adapters = list(getattr(model, "adapter", {}).values())
    weights = list(model.weight.values()) + list(model.bias.values()) + [p for a in adapters for p in (a.w1, a.b1, a.w2, a.b2)]
    return [{"params": weights, "lr": cfg.lr}] + model.scale_param_groups(cfg.scale_lr)


@torch.no_grad()
def float_logits(model: QATModel, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    """The float model's logits (the distillation teacher): the graph's original weights, no quantization."""
    return np.concatenate([float_forward(model.graph, torch.from_numpy(images[i : i + batch])).numpy() for i in range(0, len(images), batch)])


def distill_loss(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None, distill: float) -> torch.Tensor:
    """The QAT loss ``(1 - d) * CE(logits, labels) + d * KL(softmax(teacher) || softmax(logits))``, ``d = distill``
    (plain cross-entropy without ``teacher``)."""
    loss = F.cross_entropy(logits, labels)
    if teacher is None:
        return loss
    kd = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(teacher, 1), log_target=True, reduction="batchmean")
    return (1 - distill) * loss + distill * kd


def train(model: QATModel, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig = TrainConfig(), *,
          work_dir=None, show_progress: bool = False, log=None, stop_after_steps: int | None = None) -> list[dict]:
    """Fine-tune ``model`` in place; returns the per-epoch history.

    Parameters
    ----------
    model : QATModel
    images, labels : numpy.ndarray
        Training inputs (float32, the model's input layout) and integer class labels.
    cfg : TrainConfig
    work_dir : path, optional
        Where ``checkpoint.pt`` is kept.  If it holds a checkpoint of the same model and
        settings, training resumes after its last finished epoch.
    log : callable, optional
        Called with one line of text per epoch.
    stop_after_steps : int, optional
        Raise ``KeyboardInterrupt`` after this many optimizer steps (to test resume).

    Raises
    ------
    GwqError
        If ``work_dir`` holds a checkpoint of another model or other settings, or an unreadable one.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    images, labels = check_training_data(images, labels, model.base_plan.input_shape, model.graph.nodes[model.graph.outputs[0]].shape[-1])
    n = len(images)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.Adam(_param_groups(model, cfg))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    identity = {"fingerprint": model.base_plan.fingerprint, "plan": model.base_plan.to_dict(), "train": cfg.to_dict(), "samples": n,
                "optimizer": OPTIMIZER_LAYOUT}
    if model.scale_clip is not None or model.act_clip_k is not None:  # GDRQ Scale-Clip: part of what is trained
        identity["scale_clip"] = model.clip_settings()
    history, start = [], 0
    ckpt_path = Path(work_dir) / CHECKPOINT if work_dir is not None else None
    if ckpt_path is not None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        if ckpt_path.is_file():
            try:
                ckpt = torch.load(ckpt_path, weights_only=False)
            except Exception as err:  # a torn or foreign file
                raise GwqError(f"{ckpt_path}: unreadable checkpoint ({type(err).__name__}); delete it to start over") from None
            if ckpt.get("identity") != identity:
                raise GwqError(f"{ckpt_path} belongs to another model or other training settings; use another --work-dir or delete it")
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            history, start = ckpt["history"], ckpt["epoch"]
            if log:
                log(f"resumed from {ckpt_path} after epoch {start}/{cfg.epochs}")
    teacher = None
    if cfg.distill > 0 and start < cfg.epochs:
        teacher = float_logits(model, images)
    steps = 0
    for epoch in range(start, cfg.epochs):
        model.train()
        order = np.random.default_rng(cfg.seed + epoch).permutation(n)
        t0, loss_sum, correct = time.time(), 0.0, 0
        batches = range(steps_per_epoch)
        if show_progress:
            from ..runtime import progress

            batches = progress(batches, f"epoch {epoch + 1}/{cfg.epochs}", True)
        for b in batches:
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x = torch.from_numpy(images[idx])
            y = torch.from_numpy(labels[idx])
            logits = model(x)
            loss = distill_loss(logits, y, None if teacher is None else torch.from_numpy(teacher[idx]), cfg.distill)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            model.normalize_()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            steps += 1
            if stop_after_steps is not None and steps >= stop_after_steps:
                raise KeyboardInterrupt
        entry = {"epoch": epoch + 1, "loss": loss_sum / n, "train_accuracy": correct / n, "seconds": time.time() - t0}
        history.append(entry)
        if ckpt_path is not None:
            _save_atomic({"identity": identity, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "history": history, "epoch": epoch + 1}, ckpt_path)
        if log:
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {entry['loss']:.4f}, train accuracy {entry['train_accuracy']:.2%}, "
                f"{entry['seconds']:.0f} s")
    model.eval()
    return history


def evaluate(model: QATModel, images: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    """Top-1 accuracy of the fake-quant model (float32 forward)."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            correct += int((model(torch.from_numpy(images[i : i + batch])).argmax(1).numpy() == labels[i : i + batch]).sum())
    return correct / len(images)


def _stderr(line: str) -> None:  # pragma: no cover - CLI helper
    print(line, file=sys.stderr, flush=True)
