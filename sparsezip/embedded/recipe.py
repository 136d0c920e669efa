"""The training recipe's settings (:class:`TrainRecipe`, recorded in the model card) and the small helpers
both stages share: learning-rate schedule, optimizer, seeded data order, windowed logging."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from sparsezip.embedded.models import TinyLlavaSpec

TINY_SPEC = TinyLlavaSpec(
    vision_hidden=128, vision_intermediate=384, vision_layers=4, vision_heads=4,
    text_hidden=128, text_intermediate=384, text_layers=4, text_heads=4, vocab_size=640,
)


@dataclass(frozen=True)
class TrainRecipe:
    """Everything that decides the trained weights (recorded in the model card)."""

    spec: TinyLlavaSpec = TINY_SPEC
    seed: int = 0
    # One thread: on a shared 2-core machine a second OpenMP thread made every step ~2x slower (measured).
    threads: int = 1
    images: int = 12_000  # rendered once, shared by both stages
    document_share: float = 0.2  # of the training images that are documents (the rest: scenes)
    # stage 1: vision tower
    tower_steps: int = 2000
    tower_batch: int = 64
    tower_lr: float = 3e-3
    background_weight: float = 0.25  # per-patch loss weight of background patches (objects, words: 1)
    position_weight: float = 0.5  # per-patch row/column targets (keeps where a patch is in its features)
    # per-patch x / y coordinate regressed linearly (0 = off): where becomes a direction in feature space, so
    # comparing two positions is a difference, not a lookup
    coordinate_weight: float = 1.0
    # stage 2: projector + language model
    lm_steps: int = 2500
    lm_scene_only_steps: int = 0  # the first stage-2 steps see scenes only (documents join afterwards)
    existence_share: float = 0.5  # of the scene questions that ask whether an object is there
    lm_batch_images: int = 16
    questions_per_image: int = 8
    lm_lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    aux_weight: float = 1.0  # stage 2 auxiliary targets at the answer position
    # stage 2 targets at each named object's last token, half-way up the LM: absent, or where its centre is
    name_weight: float = 1.0

    def to_json(self) -> dict:
        return asdict(self)


def schedule(step: int, total: int, warmup: int) -> float:
    """Linear warmup then cosine decay to 5% (multiplier of the base learning rate)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def optimizer(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, weight decay on matrices only."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def epoch_order(n: int, total: int, gen: torch.Generator) -> np.ndarray:
    """``total`` indices into ``n`` items: concatenated seeded permutations (every item once per epoch)."""
    epochs = -(-total // n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])[:total].numpy()


def log_window(log: Callable[[str], None], stage: str, step: int, total: int, start: float,
               window: dict[str, list[float]]) -> dict[str, float] | None:
    """Every 100 steps (and at the last): log the means of ``window`` and empty it; returns the means then,
    else ``None``."""
    if (step + 1) % 100 and step + 1 != total:
        return None
    means = {k: float(np.mean(v)) for k, v in window.items() if v}
    log(f"{stage} step {step + 1}/{total} {time.perf_counter() - start:.0f}s "
        + " ".join(f"{k}={v:.3f}" for k, v in means.items()))
    for values in window.values():
        values.clear()
    return means
