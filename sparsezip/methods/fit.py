"""Does a method's configuration fit a model? Checked before a run claims its folder, and before the model is
loaded when ``config.json`` alone tells the model's geometry.

Rather than re-stating every method's rules (``none`` takes no budget below the patch count, ``pool`` needs a
budget that tiles the grid, VisionZip's dominant tokens must count the prefix, SparseVLM's schedule needs enough
decoder layers ...), :func:`check_method_fits` runs the method once on a small random context of the model's
geometry -- its token count, at a tiny hidden width -- and, for in-LLM methods, asks for the pruning schedule
on the model's layer count. Whatever the method would refuse at the first batch is refused here, in the
method's own words, prefixed with the model's numbers.
"""

from __future__ import annotations

import torch

from sparsezip.context import VisionContext
from sparsezip.methods.base import CompressionMethod

_PROBE_WIDTH = 8  # hidden size of the probe context: methods' rules depend on token counts, not on the width
_PROBE_KEY_WIDTH = 4


def probe_context(num_patches: int, prefix: int, *, text: bool = False, seed: int = 0) -> VisionContext:
    """A random one-image context of ``prefix + num_patches`` tokens: hidden ``[1, N, 8]``, keys ``[1, N, 4]``,
    a softmaxed ``cls_attn [1, 1, N]`` and, with ``text``, a ``text_query [1, 8]``; seeded, no global RNG."""
    if num_patches < 1 or prefix < 0:
        raise ValueError(f"need num_patches >= 1 and prefix >= 0, got {num_patches} and {prefix}")
    gen = torch.Generator().manual_seed(seed)
    n = prefix + num_patches
    hidden = torch.randn(1, n, _PROBE_WIDTH, generator=gen)
    keys = torch.randn(1, n, _PROBE_KEY_WIDTH, generator=gen)
    cls_attn = torch.softmax(torch.randn(1, 1, n, generator=gen), dim=-1)
    text_query = torch.randn(1, _PROBE_WIDTH, generator=gen) if text else None
    return VisionContext(hidden=hidden, keys=keys, cls_attn=cls_attn, text_query=text_query,
                         sample_seeds=torch.zeros(1, dtype=torch.long), prefix=prefix)


def check_method_fits(
    method: CompressionMethod,
    visual_tokens: int,
    *,
    prefix: int = 1,
    llm_layers: int | None = None,
    model_name: str = "the model",
    views: int = 1,
) -> None:
    """Raise ``ValueError`` if ``method`` cannot run on a model with ``visual_tokens`` patches per image, ``prefix``
    protected tokens and ``llm_layers`` decoder layers (``None`` = unknown: the in-LLM schedule is not checked).

    The vision side runs once on :func:`probe_context` and must return 1 to ``visual_tokens`` tokens; an in-LLM
    method's schedule (``pruning_layers`` or ``plan``) must exist for the model. With ``views > 1`` (LLaVA-NeXT's
    crops) the vision side runs on one view of ``visual_tokens // views`` patches at each per-view budget the
    adapter would give it (the budget spread equally, the remainder on the first views).
    """
    if views < 1 or visual_tokens % views:
        raise ValueError(f"views must divide the {visual_tokens} visual tokens, got {views}")
    layers = "" if llm_layers is None else f", {llm_layers} LLM layers"
    budget = method.config().get("budget")
    if views > 1 and method.stage == "vision" and isinstance(budget, int) and not isinstance(budget, bool):
        per_view = visual_tokens // views
        where = f"{model_name} ({visual_tokens} visual tokens per image in {views} views of {per_view}{layers})"
        if budget < views:
            raise ValueError(f"method {method.name!r} cannot run on {where}: budget {budget} cannot be spread over "
                             f"{views} views (every view needs at least one token)")
        for share in sorted({budget // views, -(-budget // views)}):
            try:
                result = method.with_budget(share)(probe_context(per_view, prefix, text=method.needs_text))
            except ValueError as err:
                raise ValueError(f"method {method.name!r} cannot run on {where}: at {share} tokens per view: "
                                 f"{err}") from None
            lengths = result.lengths.tolist()
            if not all(1 <= n <= per_view for n in lengths):
                raise ValueError(f"method {method.name!r} returns {lengths} tokens per view on {where}; it must "
                                 f"return 1 to {per_view}")
        return
    where = f"{model_name} ({visual_tokens} visual tokens per image{layers})"
    try:
        if method.stage == "llm" and llm_layers is not None:
            # The in-LLM protocol names its schedule `pruning_layers`; SparseVLM's own name is `plan`.
            schedule = getattr(method, "pruning_layers", None) or getattr(method, "plan", None)
            if schedule is not None:
                schedule(visual_tokens, llm_layers)
        result = method(probe_context(visual_tokens, prefix, text=method.needs_text))
    except ValueError as err:
        raise ValueError(f"method {method.name!r} cannot run on {where}: {err}") from None
    lengths = result.lengths.tolist()
    if not all(1 <= n <= visual_tokens for n in lengths):
        raise ValueError(f"method {method.name!r} returns {lengths} tokens on {where}; it must return 1 to "
                         f"{visual_tokens}")
