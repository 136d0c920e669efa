"""Non-finite inputs through the Python API are refused once, at the method boundary, naming the tensor
(issue 15 item 7): without the check, NaN attention made SparseZip and VisionZip keep patches in raster order
and NaN keys made SparseZip return 11 tokens instead of 16."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sparsezip.context import CHECK_FINITE_ENV, VisionContext, check_finite
from sparsezip.methods import get_method, list_methods, method_class
from sparsezip.methods.fit import probe_context

VISION_METHODS = [name for name in list_methods() if method_class(name).stage == "vision"]


def poisoned(field: str, value: float, row: int = 1) -> VisionContext:
    ctx = probe_context(36, 1, text=True)
    ctx = dataclasses.replace(ctx, **{f: getattr(ctx, f).expand(3, *getattr(ctx, f).shape[1:]).clone()
                                      for f in ("hidden", "keys", "cls_attn", "text_query")},
                              sample_seeds=torch.zeros(3, dtype=torch.long))
    tensor = getattr(ctx, field).clone()
    tensor[row].view(-1)[0] = value
    return dataclasses.replace(ctx, **{field: tensor})


@pytest.mark.parametrize("name", VISION_METHODS)
@pytest.mark.parametrize("field", ["hidden", "keys", "cls_attn", "text_query"])
def test_every_method_refuses_nan_naming_the_tensor_and_row(name: str, field: str) -> None:
    method = get_method(name, budget=16) if name != "none" else get_method(name)
    with pytest.raises(ValueError, match=rf"method '{name}': VisionContext\.{field} \[3, [0-9, ]+\] holds NaN/inf "
                                         r"values in row\(s\) \[1\]"):
        method(poisoned(field, float("nan")))


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_infinities_are_refused_too(value: float) -> None:
    with pytest.raises(ValueError, match=r"VisionContext\.cls_attn .* row\(s\) \[2\]"):
        get_method("sparsezip", budget=16)(poisoned("cls_attn", value, row=2))


def test_the_check_can_be_skipped_for_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = poisoned("keys", float("nan"))
    method = get_method("visionzip", budget=16)
    assert method(ctx, check_finite_inputs=False).tokens.shape[0] == 3  # the caller vouches for its inputs
    monkeypatch.setenv(CHECK_FINITE_ENV, "0")
    method(ctx)
    with pytest.raises(ValueError, match="keys"):
        method(ctx, check_finite_inputs=True)


def test_finite_inputs_pass_and_several_bad_tensors_are_all_named() -> None:
    ctx = probe_context(36, 1, text=True)
    check_finite(ctx)
    bad = dataclasses.replace(ctx, hidden=torch.full_like(ctx.hidden, float("nan")),
                              text_query=torch.full_like(ctx.text_query, float("inf")))
    with pytest.raises(ValueError, match=r"hidden .* row\(s\) \[0\]; VisionContext\.text_query .* row\(s\) \[0\]"):
        check_finite(bad)
    empty_keys = dataclasses.replace(ctx, keys=ctx.hidden.new_zeros(1, ctx.num_tokens, 0))  # a tower without keys
    check_finite(empty_keys)
