"""``sparsezip``: the project's own method (methods.md section 1), training-free and text-aware.

Per image: hybrid score over patches (z-scored CLS attention, channel entropy, MI proxy, plus the text term)
-> K dominant patches (fixed, or dynamic from the score variance) -> every other patch merged into
``contextual_num`` tokens by k-means on L2-normalised keys -> output ``[CLS?, dominant ascending, contextual]``.
"CLS" is the context's ``prefix`` protected tokens (CLIP: 1; ``keep_cls`` keeps them all, and a tower without
one, ``prefix = 0``, has nothing to keep); they are never scored or merged.

Budget (``budget=K``, total visual tokens per image): ``K - keep_cls`` is split between ``dominant`` and
``merging.contextual_num`` in the ratio of the configured values (54:32 by default, so 64 -> 1 + 40 + 23).
The split is made for one prefix token (CLIP) at construction (that is ``cfg``) and made again, in the same
ratio, for a context whose kept prefix differs (``prefix = 0``: 64 -> 0 + 40 + 24), so the budget is exact.
With dynamic K on, the split's dominant count is the *target* mean K: per image K varies within
``[k_min, k_max]`` and so does the token count; choose ``dynk.c`` with :meth:`SparseZip.calibrate` so the
mean over your images hits the target. Fewer tokens than the budget come out only when a contextual cluster
ends up empty (e.g. many identical tokens) or an image has fewer patches than the configuration asks for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch

from sparsezip import scoring
from sparsezip.budget import check_budget_fits, check_budget_positive, fixed_k, split_budget
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.kmeans import centre_distances, kmeans_assign
from sparsezip.layout import assemble, with_prefix
from sparsezip.merging import visionzip_merge, weighted_merge
from sparsezip.methods.base import CompressionMethod, register_method
from sparsezip.methods.rows import LLAVA15_BUDGETS, Ablation, BenchmarkRows
from sparsezip.methods.sparsezip.config import SparseZipConfig, seed_dataset_config
from sparsezip.methods.sparsezip.dynamic_k import (
    DynamicKCalibration,
    calibrate_dynamic_k,
    dynamic_k,
    score_log_variance,
)
from sparsezip.selection import rank_mask


@register_method
class SparseZip(CompressionMethod):
    """SparseZip configured by the keys of ``model.sparsezip`` (see :class:`sparsezip.methods.sparsezip.config.SparseZipConfig`).

    ``SparseZip(budget=None, **cfg)``: ``cfg`` takes the YAML block as-is (nested dicts for ``alphas``,
    ``dynk``, ``merging``); unknown keys raise ``ValueError`` naming them.
    """

    name = "sparsezip"
    needs_attention = True
    # Without CLS (Qwen2.5-VL) the CLS-attention term reads the mean attention each token receives, the same
    # substitute VisionZip's Qwen ports use; the other terms do not depend on CLS.
    attention_sources = ("cls", "mean_received")
    needs_text = True
    # One ablation row per switch, at the 64-equivalent budget where compression hurts most; every row starts
    # from the seed's preset for the dataset (cross_beta 0.1 on MME).
    benchmark = BenchmarkRows(budgets=LLAVA15_BUDGETS, order=10, dataset_config=seed_dataset_config, ablations=(
        Ablation("nohybrid", {"skip_hybrid_attn": True}),
        Ablation("notext", {"cross_beta": 0.0}),
        Ablation("dynk", {"dynamic_k": True, "skip_dynamic_k": False}, calibrate_dynamic_k=True),
        Ablation("nomerge", {"skip_ctx_merge": True}),
    ))

    def __init__(self, budget: int | None = None, **cfg: Any) -> None:
        config = SparseZipConfig.from_dict(cfg)
        self._ratio = (config.dominant, config.merging.contextual_num)
        if budget is not None:
            check_budget_positive(self.name, budget)
            dominant, contextual = split_budget(
                budget, int(config.keep_cls), config.dominant, config.merging.contextual_num
            )
            config = config.replace(
                dominant=dominant, merging=dataclasses.replace(config.merging, contextual_num=contextual)
            )
            if self._dynamic(config) and not config.k_min <= dominant <= config.k_max:
                raise ValueError(
                    f"sparsezip: budget={budget} targets {dominant} dominant tokens, outside the dynamic-K range "
                    f"[k_min={config.k_min}, k_max={config.k_max}]; set k_min/k_max around it"
                )
        self.cfg = config
        self.budget = budget

    @staticmethod
    def _dynamic(cfg: SparseZipConfig) -> bool:
        return cfg.dynamic_k and not cfg.skip_dynamic_k

    @property
    def dynamic_k_on(self) -> bool:
        """Whether K is dynamic (``dynamic_k`` on and not ``skip_dynamic_k``): adapters that cannot give it a
        meaningful per-row range refuse it (LLaVA-NeXT)."""
        return self._dynamic(self.cfg)

    def config_for(self, prefix: int) -> SparseZipConfig:
        """The configuration used on a context with ``prefix`` protected tokens: ``cfg``, with the budget split
        again when the prefix tokens kept (``prefix`` if ``keep_cls`` else 0) differ from the one assumed."""
        kept = prefix if self.cfg.keep_cls else 0
        if self.budget is None or kept == int(self.cfg.keep_cls):
            return self.cfg
        # The ratio is the one configured before construction split the budget (dominant:contextual as given).
        dominant, contextual = split_budget(self.budget, kept, *self._ratio)
        return self.cfg.replace(dominant=dominant, merging=dataclasses.replace(self.cfg.merging,
                                                                              contextual_num=contextual))

    def scores(self, ctx: VisionContext) -> torch.Tensor:
        """The final per-patch score ``s`` (hybrid + text term), ``[B, N - prefix]`` float32."""
        if ctx.cls_attn is None:
            raise ValueError("sparsezip needs the CLS attention row (VisionContext.cls_attn), got None")
        return self._scores(ctx, scoring.cls_attention(ctx.cls_attn, prefix=ctx.prefix), None)

    def _scores(self, ctx: VisionContext, attn: torch.Tensor, gram: torch.Tensor | None) -> torch.Tensor:
        """:meth:`scores` from the patches' CLS attention ``attn [B, M]`` and, if computed, the Gram matrix of
        their unit keys ``gram [B, M, M]`` (overwritten by the mutual-information term)."""
        cfg = self.cfg
        prefix = ctx.prefix
        alphas = (1.0, 0.0, 0.0) if cfg.skip_hybrid_attn else (cfg.alphas.attn, cfg.alphas.entropy, cfg.alphas.mutual)
        s = scoring.hybrid_score(
            attn,
            ctx.keys[:, prefix:],
            alpha_attn=alphas[0],
            alpha_entropy=alphas[1],
            alpha_mutual=alphas[2],
            tau_feat=cfg.tau_feat,
            tau_sim=cfg.tau_sim,
            gram=gram,
        )
        if cfg.cross_beta and ctx.text_query is not None:
            s = s + cfg.cross_beta * scoring.zscore(scoring.text_relevance(ctx.hidden[:, prefix:], ctx.text_query))
        return s

    def select_k(self, scores: torch.Tensor, cfg: SparseZipConfig | None = None) -> torch.Tensor:
        """Dominant tokens per image ``[B]`` from the scores ``[B, M]``: dynamic, or ``dominant`` (<= M) of
        ``cfg`` (default: this instance's; see :meth:`config_for`)."""
        cfg = self.cfg if cfg is None else cfg
        if self._dynamic(cfg):
            return dynamic_k(scores, k_min=cfg.k_min, k_max=cfg.k_max, c=cfg.dynk.c, scale=cfg.dynk.scale,
                             eps=cfg.dynk.eps)
        return fixed_k(scores.shape[0], cfg.dominant, scores.shape[1], scores.device)

    def compress(self, ctx: VisionContext) -> CompressionResult:
        """hidden ``[B, N, C]`` -> tokens ``[B, T, C]`` laid out ``[prefix?, dominant ascending, contextual]``.

        No host sync with fixed K: the output width ``T`` is what the counts allow (prefix + dominant +
        ``min(contextual_num, remaining)``), so where contextual clusters end up empty (rare outside degenerate,
        e.g. duplicated, inputs) the row ends in zero pad slots. Dynamic K reads its widths in one sync. The unit
        keys' Gram matrix is computed once and shared by the mutual-information score and the k-means distances.
        """
        if ctx.cls_attn is None:
            raise ValueError("sparsezip needs the CLS attention row (VisionContext.cls_attn), got None")
        if self.budget is not None:
            check_budget_fits(self.name, self.budget, ctx.num_patches)
        prefix = ctx.prefix
        cfg = self.config_for(prefix)
        patches, patch_keys = ctx.hidden[:, prefix:], ctx.keys[:, prefix:]
        b, m = patches.shape[:2]
        contextual_num = cfg.merging.contextual_num
        clustering = not cfg.skip_ctx_merge and contextual_num > 0 and m > 0
        mutual = not cfg.skip_hybrid_attn and bool(cfg.alphas.mutual) and m > 2

        attn = scoring.cls_attention(ctx.cls_attn, prefix=prefix)
        unit_keys = scoring.l2_normalize(patch_keys) if clustering or mutual else None
        gram = torch.bmm(unit_keys, unit_keys.transpose(1, 2)) if unit_keys is not None else None
        # The k-means distances read the Gram matrix before the MI score overwrites it.
        distances = centre_distances(unit_keys, gram) if clustering else None
        s = self._scores(ctx, attn, gram if mutual else None)

        dynamic = self._dynamic(cfg)
        k_fixed = min(cfg.dominant, m)
        if dynamic:
            k = self.select_k(s, cfg)
            dominant = rank_mask(s, k)
        else:
            k = torch.full((b,), k_fixed, dtype=torch.long, device=s.device)
            dominant = rank_mask(s, k_fixed)
        remaining = ~dominant
        if cfg.skip_ctx_merge:
            contextual, slot_valid, labels = visionzip_merge(patches, patch_keys, remaining, contextual_num)
        else:
            labels, n_clusters = kmeans_assign(
                unit_keys if unit_keys is not None else scoring.l2_normalize(patch_keys),
                remaining,
                contextual_num,
                init_factor=cfg.merging.kmeans_init_factor,
                iters=cfg.merging.kmeans_iters,
                agglomerative=cfg.merging.agglomerative,
                seed=cfg.seed,
                distances=distances,
            )
            weights = attn if cfg.merging.attention_weighted else None
            contextual = weighted_merge(patches, labels, contextual_num, weights)
            slot_valid = torch.arange(contextual_num, device=s.device) < n_clusters[:, None]

        keep = with_prefix(dominant, prefix, cfg.keep_cls)
        kept = (prefix if cfg.keep_cls else 0) + k_fixed
        width = None
        if not dynamic:  # the counts alone bound the output: a width known on the host, no sync
            remaining_count = m - k_fixed
            if cfg.skip_ctx_merge:  # VisionZip's slots: exactly this many
                step = max(1, remaining_count // contextual_num) if contextual_num else 1
                width = kept + sum(1 for j in range(contextual_num) if j * step < remaining_count)
            else:  # at most this many clusters; one left empty (rare) leaves a zero pad slot
                width = kept + min(contextual_num, remaining_count)
        return assemble(ctx.hidden, keep, k, contextual, slot_valid, with_prefix(labels, prefix, -1),
                        kept_per_row=None if dynamic else kept, width=width, valid_slots_first=True)

    def calibrate(
        self, contexts: Iterable[VisionContext], target_mean_k: float | None = None, *, scale: float | None = None
    ) -> DynamicKCalibration:
        """Fit ``dynk.c`` (and ``dynk.scale`` unless given) so dynamic K averages ``target_mean_k`` on ``contexts``.

        The target defaults to this instance's ``dominant`` (the budget's split). Scores are computed with this
        configuration (alphas, text term, ...). Use the result as
        ``get_method("sparsezip", budget=..., dynamic_k=True, dynk=calibration.as_config())``.
        """
        log_var = [score_log_variance(self.scores(ctx), self.cfg.dynk.eps).cpu() for ctx in contexts]
        if not log_var:
            raise ValueError("sparsezip.calibrate needs at least one VisionContext")
        return calibrate_dynamic_k(
            torch.cat(log_var),
            self.cfg.dominant if target_mean_k is None else target_mean_k,
            k_min=self.cfg.k_min,
            k_max=self.cfg.k_max,
            scale=scale,
        )

    def config(self) -> dict:
        return {"budget": self.budget, **self.cfg.to_dict()}
