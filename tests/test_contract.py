"""The generic contract (sparsezip.testing.contract) on every registered method, including any added later."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsezip import VisionContext, get_method, list_methods
from sparsezip.methods import method_class
from sparsezip.testing.contract import check_budget, check_budget_semantics, check_layer_pruner, check_method
from sparsezip.testing.strategies import vision_contexts

METHODS = list_methods()
IN_LLM = [n for n in METHODS if method_class(n).stage == "llm"]


@pytest.mark.parametrize("name", METHODS)
@settings(max_examples=25)
@given(data=st.data())
def test_default_config_meets_contract(name: str, data: st.DataObject, device: torch.device) -> None:
    # Defaults target LLaVA-scale inputs (64-87 tokens), so use a grid with at least 81 patches.
    ctx = data.draw(vision_contexts(min_grid=9, max_grid=10, device=device))
    check_method(get_method(name), ctx)


@pytest.mark.parametrize("name", METHODS)
@settings(max_examples=25)
@given(data=st.data())
def test_budgeted_config_meets_contract(name: str, data: st.DataObject, device: torch.device) -> None:
    cls = method_class(name)
    if cls.stage != "vision" or name == "none":
        pytest.skip(f"{name}: budget is not a vision-side token count (stage {cls.stage!r} or fixed)")
    ctx = data.draw(vision_contexts(device=device))
    budget = data.draw(st.integers(1, ctx.num_patches), label="budget")
    check_budget(cls, ctx, budget)


@pytest.mark.parametrize("name", [n for n in METHODS if method_class(n).needs_attention])
def test_methods_needing_attention_refuse_without_it(name: str) -> None:
    ctx = VisionContext(hidden=torch.zeros(1, 5, 4), keys=torch.zeros(1, 5, 2))
    with pytest.raises(ValueError, match="cls_attn"):
        get_method(name)(ctx)


@pytest.mark.parametrize("name", IN_LLM)
@pytest.mark.parametrize(("patches", "layers"), [(576, 32), (144, 4), (576, 16)])
def test_in_llm_budget_semantics(name: str, patches: int, layers: int) -> None:
    """budget = layer-averaged visual tokens where reachable, else (and with budget_mode="nominal") the paper's
    N-token setting, with a warning; per-layer counts and both figures in the plan."""
    check_budget_semantics(method_class(name), patches, layers)


@pytest.mark.parametrize("name", IN_LLM)
def test_in_llm_methods_run_batched_as_planned(name: str, tiny_vlm) -> None:
    """Left-padded rows of different lengths: batch == batch size 1, measured per-layer counts == the plan."""
    import numpy as np
    from PIL import Image

    from sparsezip.data.prompts import llava_v1_prompt

    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (64, 48 + 16 * i, 3), dtype=np.uint8)) for i in range(3)]
    questions = ["Is there a red circle in the image?", "Count.", "What colour is the large shape on the left?"]
    for budget, mode in ((16, "layer_averaged"), (48, "nominal")):
        check_layer_pruner(get_method(name, budget=budget, budget_mode=mode), tiny_vlm, images,
                           [llava_v1_prompt(q) for q in questions])
