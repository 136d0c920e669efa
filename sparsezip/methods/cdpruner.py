"""``cdpruner``: CDPruner (Zhang et al., 2025; Theia-4869/CDPruner), a conditional DPP over the visual tokens.

1. Similarity ``S_ij = cos(x_i, x_j)`` of the patch features.
2. Instruction relevance ``r_i = -cos(x_i, t)`` (negated, as the authors do), min-max normalised per image:
   ``r = (r - min r + 1e-6) / (max r - min r)``.
3. Kernel ``L = diag(r) S diag(r)``; greedy MAP inference of the DPP (:func:`sparsezip.selection.dpp_greedy_map`)
   picks ``budget`` patches, kept as-is in raster order; CLS and the rest are dropped.

Budget: ``budget`` = tokens fed to the LLM per image (default 64) = CDPruner's ``visual_token_num``.

Without a text query (``VisionContext.text_query is None``) the relevance is uniform and the kernel is the plain
similarity DPP (the authors' code requires a question).

Fidelity notes:
- **Text source**: the authors compare CLIP's *text tower* embedding of the question with the tapped layer's
  patches passed through CLIP's ``post_layernorm`` and ``visual_projection`` (CLIP's joint space), and negate
  the cosine (their ``relevance = -relevance``, with their relevance visualisation also negated). Here, as
  for every text-aware method in this project, the question is ``VisionContext.text_query``: the mean LLM
  input embedding of the question mapped into the vision hidden space by the projector's transposed weights
  (``sparsezip.adapters.llava``), compared with the patch features directly. The sign convention is kept
  (``negate_relevance=True``, the authors' formula); ``negate_relevance=False`` uses ``+cos``, which is what
  relevance means for this text source -- both are reported.
- **Similarity features**: the authors take the cosine of the *projected* tokens (after ``mm_projector``);
  we use the pre-projector patch features of the tapped layer (the projector is not part of a context).
- Relevance is normalised per image; the authors normalise over the whole batch (their evaluation runs one
  image per batch, where the two agree). A constant relevance (``max == min``), which the authors would
  divide by zero on, counts as uniform. Float32 throughout, as theirs. Greedy ties: lower index. Gains below
  1e-5 of the largest ``L_jj`` count as 0 (:func:`~sparsezip.selection.dpp_greedy_map`): past the kernel's
  rank (more picks than the features' rank) they are rounding noise, where the authors' update would divide
  by ~0 or take the root of a negative number; it also puts the patches with relevance below ~0.003 of the
  top one after all others.
"""

from __future__ import annotations

import torch

from sparsezip.budget import check_budget_fits, check_budget_positive
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.layout import assemble
from sparsezip.methods.base import CompressionMethod, register_method
from sparsezip.methods.rows import LLAVA15_BUDGETS, Ablation, BenchmarkRows
from sparsezip.scoring import cosine_similarity_matrix, text_relevance
from sparsezip.selection import dpp_greedy_map

DEFAULT_BUDGET = 64
# Added to the numerator of the min-max normalisation in the authors' code, so no token gets relevance 0.
RELEVANCE_FLOOR = 1e-6


def conditional_relevance(patches: torch.Tensor, text_query: torch.Tensor | None, negate: bool) -> torch.Tensor:
    """CDPruner's min-max normalised instruction relevance. patches: ``[B, M, C]``; text_query: ``[B, C]`` or
    None (uniform relevance 1) -> ``[B, M]`` float32 in ``(0, 1]`` (up to the 1e-6 floor)."""
    b, m, _ = patches.shape
    if text_query is None:
        return torch.ones(b, m, device=patches.device)
    cos = text_relevance(patches, text_query)
    relevance = -cos if negate else cos
    low = relevance.min(dim=1, keepdim=True).values
    span = relevance.max(dim=1, keepdim=True).values - low
    normalised = (relevance - low + RELEVANCE_FLOOR) / span.clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(span > 0, normalised, 1.0)


@register_method
class CDPruner(CompressionMethod):
    """Keep ``budget`` (default 64) patches chosen by a text-conditioned DPP (greedy MAP), raster order."""

    name = "cdpruner"
    needs_text = True
    benchmark = BenchmarkRows(
        budgets=LLAVA15_BUDGETS, order=64,
        # +cos relevance: what "relevant" means for this project's text vector (see the fidelity notes).
        ablations=(Ablation("pluscos", {"negate_relevance": False}),),
    )

    def __init__(self, budget: int | None = None, negate_relevance: bool = True) -> None:
        if budget is not None:
            check_budget_positive(self.name, budget)
        if not isinstance(negate_relevance, bool):
            raise ValueError(f"cdpruner: negate_relevance must be a bool, got {negate_relevance!r}")
        self.budget = budget
        self.negate_relevance = negate_relevance

    def compress(self, ctx: VisionContext) -> CompressionResult:
        """hidden ``[B, N, C]`` (+ text_query ``[B, C]``) -> tokens ``[B, budget, C]``, ascending index."""
        budget = DEFAULT_BUDGET if self.budget is None else self.budget
        prefix = ctx.prefix  # protected leading tokens (CLS): never selected or merged
        b, n, _ = ctx.hidden.shape
        check_budget_fits(self.name, budget, n - prefix)
        patches = ctx.hidden[:, prefix:]
        relevance = conditional_relevance(patches, ctx.text_query, self.negate_relevance)
        kernel = relevance[:, :, None] * cosine_similarity_matrix(patches) * relevance[:, None, :]
        picks = dpp_greedy_map(kernel, budget) + prefix
        keep = torch.zeros(b, n, dtype=torch.bool, device=ctx.hidden.device).scatter_(1, picks, True)
        return assemble(ctx.hidden, keep, torch.full((b,), budget, dtype=torch.long, device=ctx.hidden.device),
                        kept_per_row=budget, width=budget)

    def config(self) -> dict:
        return {"budget": self.budget, "negate_relevance": self.negate_relevance}
