"""The generic method contract: properties every registered method must have, whatever it does.

Used by ``tests/test_contract.py`` (parametrized over ``list_methods()``) and available to anyone adding a
method: ``check_method(get_method("mine"), ctx)`` raises ``AssertionError`` naming the broken property.
Method-specific behaviour (which tokens, exact counts) is tested per method; this checks the shape of the
promise: a well-formed, deterministic, finite :class:`CompressionResult` that matches its own bookkeeping, on
contexts with and without a protected prefix (``VisionContext.prefix``: CLIP's CLS, or none), whose tokens are
kept verbatim or dropped but never merged.

For ``stage == "llm"`` methods (pruning inside the LLM) the vision-side ``compress`` may be the identity,
like ``none``; the same result invariants still apply to whatever it returns, and the method must be a
:class:`~sparsezip.methods.base.LayerPruner` with a known position policy.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import torch

from sparsezip.context import ATTENTION_SOURCES, CompressionResult, VisionContext
from sparsezip.methods.base import CompressionMethod, LayerPruner, list_methods


class ContractError(AssertionError):
    """A method broke the generic contract."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ContractError(message)


def check_declarations(method: CompressionMethod) -> None:
    """Class attributes are what the registry and the adapter rely on; ``config()`` is JSON."""
    name = type(method).name
    _require(name in list_methods(), f"{name!r} is not registered")
    _require(type(method).stage in ("vision", "llm"), f"{name}: stage {type(method).stage!r} is not vision/llm")
    for attr in ("needs_attention", "needs_text"):
        _require(isinstance(getattr(type(method), attr), bool), f"{name}: {attr} must be a bool")
    if type(method).stage == "llm":  # adapters run such methods through the layer-wise loop
        _require(isinstance(method, LayerPruner), f"{name}: stage 'llm' but not a LayerPruner")
        _require(type(method).position_policy in ("renumber", "original"),
                 f"{name}: position_policy {type(method).position_policy!r} is not renumber/original")
    sources = type(method).attention_sources
    _require(isinstance(sources, tuple) and bool(sources) and all(s in ATTENTION_SOURCES for s in sources),
             f"{name}: attention_sources {sources!r} must be a non-empty tuple of {ATTENTION_SOURCES}")
    try:
        json.dumps(method.config())
    except TypeError as err:
        raise ContractError(f"{name}: config() is not JSON-serialisable: {err}") from None


def check_result(result: CompressionResult, ctx: VisionContext, name: str = "method") -> None:
    """Structural invariants of ``result`` for input ``ctx`` (see the module docstring)."""
    b, n, c = ctx.hidden.shape
    tokens = result.tokens
    _require(isinstance(result, CompressionResult), f"{name}: returned {type(result).__name__}")
    _require(tokens.shape[0] == b and tokens.shape[2] == c, f"{name}: tokens {tuple(tokens.shape)} vs B={b}, C={c}")
    _require(tokens.dtype == ctx.hidden.dtype, f"{name}: tokens dtype {tokens.dtype} != input {ctx.hidden.dtype}")
    _require(tokens.device == ctx.hidden.device, f"{name}: tokens on {tokens.device}, input on {ctx.hidden.device}")
    for field in ("lengths", "kept_index", "assignment", "k"):
        value = getattr(result, field)
        _require(value.dtype == torch.long, f"{name}: {field} dtype {value.dtype}, expected int64")
        _require(value.device == tokens.device, f"{name}: {field} on {value.device}, tokens on {tokens.device}")
    t = tokens.shape[1]
    lengths = result.lengths
    _require(bool(((lengths >= 0) & (lengths <= t)).all()), f"{name}: lengths {lengths.tolist()} outside [0, T={t}]")
    # T may exceed lengths.max() (a width fixed from the counts, to skip a host sync) but never the input's N.
    _require(t <= n, f"{name}: T={t} exceeds the input's N={n} tokens")
    real = torch.arange(t, device=tokens.device)[None, :] < lengths[:, None]
    _require(bool((tokens[~real] == 0).all()), f"{name}: padding positions are not zero")
    if bool(torch.isfinite(ctx.hidden).all()):
        _require(bool(torch.isfinite(tokens).all()), f"{name}: non-finite output tokens for finite input")
    _require(bool(((result.k >= 0) & (result.k <= n)).all()), f"{name}: k {result.k.tolist()} outside [0, N={n}]")

    assignment = result.assignment
    _require(tuple(assignment.shape) == (b, n), f"{name}: assignment {tuple(assignment.shape)} != [B, N]={(b, n)}")
    _require(bool(((assignment >= -1) & (assignment < lengths[:, None])).all()),
             f"{name}: assignment points outside [-1, lengths)")
    # Every real output token comes from at least one source token (nothing appears from nowhere).
    used = torch.zeros(b, t + 1, dtype=torch.bool, device=tokens.device)
    used.scatter_(1, torch.where(assignment >= 0, assignment, t), True)
    _require(bool((used[:, :t] | ~real).all()), f"{name}: an output token has no source token assigned to it")

    kept = result.kept_index
    valid = kept >= 0
    _require(bool(((kept >= -1) & (kept < n)).all()), f"{name}: kept_index outside [-1, N={n})")
    _require(bool((valid[:, 1:] <= valid[:, :-1]).all()) if kept.shape[1] > 1 else True,
             f"{name}: kept_index has -1 before a real index (padding must trail)")
    kept_safe = kept.clamp_min(0)
    times_kept = torch.zeros(b, n + 1, dtype=torch.long, device=kept.device)
    times_kept.scatter_add_(1, torch.where(valid, kept, n), torch.ones_like(kept))
    _require(bool((times_kept[:, :n] <= 1).all()), f"{name}: kept_index repeats a source token")
    # A kept token is passed through verbatim at the slot its assignment names.
    slot = assignment.gather(1, kept_safe)
    _require(bool((slot[valid] >= 0).all()), f"{name}: a kept token is marked dropped in assignment")
    out = tokens.gather(1, slot.clamp_min(0)[:, :, None].expand(-1, -1, c))
    src = ctx.hidden.gather(1, kept_safe[:, :, None].expand(-1, -1, c))
    _require(bool((out == src)[valid].all()), f"{name}: a kept token differs from its source token")
    # The prefix (CLS) is protected: kept verbatim or dropped, never averaged into a merged token.
    prefix = ctx.prefix
    kept_prefix = times_kept[:, :prefix] > 0
    _require(bool(((assignment[:, :prefix] == -1) | kept_prefix).all()),
             f"{name}: a prefix (CLS) token of the {prefix} protected ones was merged into another token")
    try:
        json.dumps(result.info)
    except TypeError as err:
        raise ContractError(f"{name}: info is not JSON-serialisable: {err}") from None


def _same(a: CompressionResult, b: CompressionResult) -> bool:
    return all(
        torch.equal(getattr(a, f), getattr(b, f)) for f in ("tokens", "lengths", "kept_index", "assignment", "k")
    ) and a.info == b.info


def check_method(method: CompressionMethod, ctx: VisionContext) -> CompressionResult:
    """Run ``method`` on ``ctx`` twice and check declarations, result invariants, determinism, and that the
    input was not modified. Returns the result for further, method-specific checks."""
    name = type(method).name
    check_declarations(method)
    before = [t.clone() for t in (ctx.hidden, ctx.keys) if t is not None]
    first = method(ctx)
    check_result(first, ctx, name)
    _require(all(torch.equal(x, y) for x, y in zip(before, (ctx.hidden, ctx.keys), strict=True)),
             f"{name}: modified its input in place")
    _require(_same(first, method(ctx)), f"{name}: not deterministic (two calls on the same input differ)")
    if not type(method).needs_attention:
        without = dataclasses.replace(ctx, cls_attn=None)
        _require(_same(first, method(without)), f"{name}: declares needs_attention=False but reads cls_attn")
    if not type(method).needs_text and ctx.text_query is not None:
        without = dataclasses.replace(ctx, text_query=None)
        _require(_same(first, method(without)), f"{name}: declares needs_text=False but reads text_query")
    return first


def check_budget(method_cls: type[CompressionMethod], ctx: VisionContext, budget: int) -> None:
    """Budget handling of a vision-stage method: ``budget`` in ``[1, M]`` is honoured (at most ``budget``
    tokens) or refused with ``ValueError``; ``0`` and ``M + 1`` are refused with ``ValueError``."""
    name = method_cls.name
    m = ctx.num_patches
    try:
        result = method_cls(budget=budget)(ctx)
    except ValueError:
        pass
    else:
        check_result(result, ctx, name)
        _require(int(result.lengths.max()) <= budget, f"{name}: {int(result.lengths.max())} tokens > budget {budget}")
    for bad in (0, m + 1):
        try:
            method_cls(budget=bad)(ctx)
        except ValueError:
            continue
        raise ContractError(f"{name}: budget={bad} with {m} patches was accepted")


# ---------------------------------------------------------------------------------------------- in-LLM methods
def check_budget_semantics(
    method_cls: type[LayerPruner], num_patches: int, num_layers: int, *, budgets: tuple[int, ...] | None = None,
    tolerance: float = 4.0,
) -> None:
    """The budget rule every in-LLM method shares (``sparsezip.methods.llm_budget``), on a model with
    ``num_patches`` visual tokens and ``num_layers`` decoder layers.

    For each budget (default: 1, 1/9, 1/4, 1/2 of the tokens and all of them): under ``budget_mode="nominal"``
    the plan is the paper's ``budget``-token setting (``nominal == budget``, no warning); under the default
    ``"layer_averaged"`` the plan's layer-averaged equivalent is within ``tolerance`` of a reachable budget (no
    warning), else the method warns (:class:`~sparsezip.methods.llm_budget.BudgetWarning`) and runs exactly the
    nominal setting. Always: the per-layer list is what the declared pruning layers and counts leave in each
    layer's cache, ``pruning_layers`` agrees with the plan, ``config()`` records ``budget_mode``, and budgets
    ``0`` / ``num_patches + 1`` or an unknown mode are a ``ValueError``.
    """
    from sparsezip.methods.llm_budget import BudgetWarning, cache_counts, layer_averaged

    name = method_cls.name
    n, lyr = num_patches, num_layers
    for budget in budgets or tuple(sorted({1, max(1, n // 9), max(1, n // 4), max(1, n // 2), n})):
        plans = {}
        for mode in ("nominal", "layer_averaged"):
            method = method_cls(budget=budget, budget_mode=mode)
            _require(method.config().get("budget_mode") == mode, f"{name}: config() does not record budget_mode")
            where = f"{name} budget {budget} ({mode}) on {n} tokens x {lyr} layers"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    plan = method.budget_plan(n, lyr)
                except ValueError:
                    # the paper's own setting may not fit the model (DART's M = all tokens): refused, not bent
                    _require(mode == "nominal", f"{where}: a layer-averaged budget in [1, N] was refused")
                    plans[mode] = None
                    continue
            warned = [w for w in caught if issubclass(w.category, BudgetWarning)]
            _require(plan is not None, f"{where}: budget_plan returned None")
            _require(list(plan.per_layer) == cache_counts(plan.setting.layers, plan.setting.counts, n, lyr),
                     f"{where}: per_layer {list(plan.per_layer)} is not what its pruning layers leave")
            _require(plan.layer_averaged == layer_averaged(list(plan.per_layer)), f"{where}: layer_averaged")
            _require(tuple(method.pruning_layers(n, lyr)) == plan.setting.layers, f"{where}: pruning_layers")
            json.dumps(plan.to_json())
            if mode == "nominal":
                _require(plan.applied == "nominal" and plan.nominal == budget and not warned,
                         f"{where}: the nominal plan must be the {budget}-token setting without a warning")
            elif plan.applied == "layer_averaged":
                _require(not warned and abs(plan.layer_averaged - budget) <= tolerance,
                         f"{where}: equivalent {plan.layer_averaged:.2f} is not within {tolerance} of the budget")
                _require(budget >= plan.reachable[0] - 0.5, f"{where}: reached below its reachable range")
            else:
                _require(plan.applied == "nominal" and len(warned) == 1 and plan.warning is not None,
                         f"{where}: an unreachable budget must fall back to nominal with one BudgetWarning")
                _require(plans["nominal"] is not None and plan.setting == plans["nominal"].setting,
                         f"{where}: the fallback is not the nominal plan")
                _require(budget < plan.reachable[0], f"{where}: fell back although {plan.reachable} reaches it")
            plans[mode] = plan
    for bad in (0, n + 1):
        try:
            method_cls(budget=bad).budget_plan(n, lyr)
        except ValueError:
            continue
        raise ContractError(f"{name}: budget={bad} with {n} visual tokens was accepted")
    try:
        method_cls(budget=1, budget_mode="bogus")
    except ValueError:
        return
    raise ContractError(f"{name}: budget_mode='bogus' was accepted")


def check_layer_pruner(method: LayerPruner, vlm: object, images: list, prompts: list[str],
                       max_new_tokens: int = 3) -> None:
    """``method`` run through a model adapter (``vlm.generate``) on a batch of prompts of different lengths:
    each row's answer, per-layer counts and pruning counts equal its batch-size-1 run; every layer's measured
    visual tokens are the plan's (``budget_plan``), ``visual_tokens`` is their mean and the nominal count is
    recorded (``extra["nominal_visual_tokens"]``)."""
    name = type(method).name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fallback's BudgetWarning is checked by check_budget_semantics
        batched = vlm.generate(images, prompts, method=method, max_new_tokens=max_new_tokens)
        singles = [vlm.generate([image], [prompt], method=method, max_new_tokens=max_new_tokens)[0]
                   for image, prompt in zip(images, prompts, strict=True)]
        plan = method.budget_plan(vlm.nominal_visual_tokens, vlm.config.text_config.num_hidden_layers)
    for row, (out, one) in enumerate(zip(batched, singles, strict=True)):
        where = f"{name} row {row}"
        _require(out.extra["token_ids"] == one.extra["token_ids"], f"{where}: batched answer differs from batch 1")
        _require(out.visual_tokens_per_layer == one.visual_tokens_per_layer, f"{where}: per-layer counts differ")
        _require(out.extra["counts_after_pruning"] == one.extra["counts_after_pruning"], f"{where}: counts differ")
        _require(out.visual_tokens_per_layer == list(plan.per_layer),
                 f"{where}: measured per-layer {out.visual_tokens_per_layer} != planned {list(plan.per_layer)}")
        _require(out.visual_tokens == plan.layer_averaged, f"{where}: visual_tokens is not the layer average")
        _require(out.extra.get("nominal_visual_tokens") == plan.nominal, f"{where}: nominal count not recorded")
