"""Unregistered compression methods for tests and benchmarks (never in the registry, so they never show up in
the benchmark matrix or in ``list_methods()``). Plain batched tensor code, like a real method."""

from __future__ import annotations

import torch

from sparsezip.context import CompressionResult, VisionContext
from sparsezip.layout import with_prefix
from sparsezip.methods.base import CompressionMethod


def keep_patches(ctx: VisionContext, keep: torch.Tensor) -> CompressionResult:
    """Keep the patches flagged in ``keep [B, N - prefix]`` (ascending, the prefix (CLS) dropped), drop the rest;
    K may differ per image. Tokens are zero-padded to the batch maximum."""
    b, _, c = ctx.hidden.shape
    prefix, m = ctx.prefix, ctx.num_patches
    if keep.shape != (b, m):
        raise ValueError(f"keep must be [B={b}, N-prefix={m}], got {tuple(keep.shape)}")
    lengths = keep.sum(dim=1)
    width = int(lengths.max())
    order = torch.sort((~keep).int(), dim=1, stable=True).indices[:, :width]  # kept patches first, ascending
    valid = torch.arange(width, device=keep.device)[None, :] < lengths[:, None]
    kept_index = torch.where(valid, order + prefix, -1)
    tokens = ctx.hidden.gather(1, kept_index.clamp(min=0)[..., None].expand(-1, -1, c)) * valid[..., None]
    slot = keep.long().cumsum(dim=1) - 1
    assignment = with_prefix(torch.where(keep, slot, -1), prefix, -1)
    return CompressionResult(tokens, lengths, kept_index, assignment, lengths.clone())


class KeepEveryNth(CompressionMethod):
    """Image ``b`` keeps every ``(b + 2)``-th patch, so K differs per image in a batch. Declares ``needs_text``
    and records the ``text_query`` it was handed (``seen_text_query``)."""

    name = "test-every-nth"
    needs_text = True

    def __init__(self) -> None:
        self.seen_text_query: torch.Tensor | None = None

    def compress(self, ctx: VisionContext) -> CompressionResult:
        self.seen_text_query = ctx.text_query
        patch = torch.arange(ctx.num_patches, device=ctx.hidden.device)
        step = torch.arange(ctx.batch_size, device=ctx.hidden.device)[:, None] + 2
        return keep_patches(ctx, patch[None, :] % step == 0)


class KeepFirst(CompressionMethod):
    """Keeps the first ``budget`` patches in raster order: a fixed token count at no scoring cost (for timing the
    LLM at a given visual token count). ``needs_attention`` can be switched on to exercise the adapter's checks."""

    name = "test-keep-first"

    def __init__(self, budget: int, needs_attention: bool = False) -> None:
        if budget < 1:
            raise ValueError(f"budget must be >= 1, got {budget}")
        self.budget = budget
        self.needs_attention = needs_attention

    def compress(self, ctx: VisionContext) -> CompressionResult:
        if self.budget > ctx.num_patches:
            raise ValueError(f"budget {self.budget} exceeds the {ctx.num_patches} patches")
        patch = torch.arange(ctx.num_patches, device=ctx.hidden.device)
        return keep_patches(ctx, (patch < self.budget).expand(ctx.batch_size, -1))

    def config(self) -> dict:
        return {"budget": self.budget}
