"""The benchmark matrix's case list: ids, relative budgets, and the narrowing options."""

import re
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sparsezip.bench.matrix import (
    EMBEDDED_MODEL_NAMES,
    FULL_BUDGET,
    LLAVA15_BUDGETS,
    build_matrix,
    matrix_rows,
    row_names,
    scale_budget,
)
from sparsezip.data.registry import benchmark_datasets
from sparsezip.methods import get_method
from sparsezip.methods.sparsezip.config import load_preset


def _ids(cases) -> list[str]:
    return [case.id for case in cases]


def test_relative_budgets_on_llava_and_small_models() -> None:
    assert [scale_budget(b, 576) for b in LLAVA15_BUDGETS] == [64, 128, 192]
    assert [scale_budget(b, 144) for b in LLAVA15_BUDGETS] == [16, 32, 48]
    assert [scale_budget(b, 64) for b in LLAVA15_BUDGETS] == [7, 14, 21]
    assert scale_budget(FULL_BUDGET, 144) == 144


@given(budget=st.integers(1, 576), patches=st.integers(9, 2048))
def test_scaled_budget_keeps_the_token_fraction(budget: int, patches: int) -> None:
    assume(budget * patches / 576 > 0.5)  # below that it is "less than one token": an error, tested below
    tokens = scale_budget(budget, patches)
    assert 1 <= tokens <= patches
    assert abs(tokens / patches - budget / 576) <= 0.5 / patches + 1e-12


@pytest.mark.parametrize(("budget", "patches", "match"), [
    (0, 144, "budget must be in"), (577, 144, "budget must be in"), (64, 0, "num_patches"),
    (1, 100, "less than one token"),
])
def test_bad_budgets_name_the_value(budget: int, patches: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        scale_budget(budget, patches)


def test_full_matrix_has_every_row_and_dataset() -> None:
    cases = build_matrix("tiny-shapes", 144)
    ids = _ids(cases)
    assert len(ids) == len(set(ids)), "case ids must be unique"
    # per dataset: none + sparsezip x3 + 4 ablations + visionzip x3 + random + pool = 13,
    # + tome, divprune, prumerge_plus, vispruner, cdpruner x3 + cdpruner-pluscos = 16,
    # + 4 in-LLM methods (sparsevlm, fastv, pdrop, dart) x 3 budgets x (layer-averaged + paper row) = 24
    assert len(cases) == 53 * len(benchmark_datasets())
    assert "pope-adversarial[tiny-shapes]-sparsezip-k16" in ids
    assert "pope-random[tiny-shapes]-none" in ids
    assert "mme[tiny-shapes]-visionzip-k48" in ids
    assert "docvqa[tiny-shapes]-sparsevlm-k32" in ids
    for ablation in ("nohybrid", "notext", "dynk", "nomerge"):
        assert f"pope-popular[tiny-shapes]-sparsezip-{ablation}-k16" in ids
        assert f"pope-popular[tiny-shapes]-sparsezip-{ablation}-k32" not in ids  # ablations at 64-equiv only
    assert {c.budget for c in cases if c.row.name in ("random", "pool")} == {16}


def test_llava_scale_ids_use_the_models_token_count() -> None:
    ids = _ids(build_matrix("llava-1.5-7b-hf", 576, datasets=["pope-random"]))
    assert "pope-random[llava-1.5-7b-hf]-visionzip-k64" in ids
    assert "pope-random[llava-1.5-7b-hf]-sparsezip-k192" in ids


def _select(ids: list[str], expr: str) -> list[str]:
    """What `pytest -k expr` selects for a single-word expression: case-insensitive substring match."""
    return [i for i in ids if expr.lower() in i.lower()]


@pytest.mark.parametrize("word", ["pope", "adversarial", "visionzip", "k16", "mme", "sparsevlm", "none"])
def test_k_expressions_select_what_they_say(word: str) -> None:
    cases = build_matrix("tiny-shapes", 144)
    selected = set(_select(_ids(cases), word))
    if word in ("pope", "adversarial", "mme"):
        expected = {c.id for c in cases if word in c.dataset}
    elif word.startswith("k") and word[1:].isdigit():
        expected = {c.id for c in cases if c.budget == int(word[1:])}
    else:
        expected = {c.id for c in cases if c.row.method == word}
    assert selected == expected and selected


def test_methods_narrow_by_method_or_row_name() -> None:
    sparsezip = build_matrix("m", 144, methods=["sparsezip"])
    assert {c.row.name for c in sparsezip} == {r for r in row_names() if r.startswith("sparsezip")}
    only = build_matrix("m", 144, methods=["sparsezip-notext", "pool"])
    assert {c.row.name for c in only} == {"sparsezip-notext", "pool"}


def test_budgets_are_in_the_llava_scale_and_mapped() -> None:
    cases = build_matrix("m", 144, llava_budgets=[128])
    assert cases and {c.budget for c in cases} == {32}
    in_llm = {"sparsevlm", "fastv", "pdrop", "dart"}
    assert {c.row.name for c in cases} == {"sparsezip", "visionzip", "tome", "divprune", "prumerge_plus",
                                           "vispruner", "cdpruner", *in_llm, *(f"{m}-paper" for m in in_llm)}
    assert {c.row.name for c in build_matrix("m", 144, llava_budgets=[576])} == {"none"}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"methods": ["nosuchmethod"]}, "unknown method nosuchmethod"),
    ({"llava_budgets": [16]}, r"unknown budget \(LLaVA-1.5 scale\) 16"),
    ({"datasets": ["vqav2"]}, "unknown dataset vqav2"),
])
def test_unknown_filters_are_errors_listing_the_choices(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_matrix("m", 144, **kwargs)


def test_method_kwargs_carry_budget_and_ablation_switch() -> None:
    case = next(c for c in build_matrix("m", 144, methods=["sparsezip-nomerge"]))
    assert case.method_kwargs() == {**load_preset("pope"), "skip_ctx_merge": True, "budget": 16}
    none = next(c for c in build_matrix("m", 144, methods=["none"]))
    assert none.method_kwargs() == {} and none.budget is None
    # SparseVLM's budget is in the model's tokens too (its layer-averaged equivalent; the paper row: nominal).
    vlm = build_matrix("m", 144, datasets=["mme"], methods=["sparsevlm"])
    assert [(c.id.split("]-")[-1], c.method_kwargs()) for c in vlm] == [
        ("sparsevlm-k16", {"budget": 16}), ("sparsevlm-k32", {"budget": 32}), ("sparsevlm-k48", {"budget": 48}),
        *((f"sparsevlm-paper-k{b}", {"budget_mode": "nominal", "budget": b}) for b in (16, 32, 48))]


def test_sparsezip_rows_start_from_the_datasets_seed_preset() -> None:
    cases = {c.id: c for c in build_matrix("m", 144, methods=["sparsezip"])}
    mme = cases["mme[m]-sparsezip-k16"].method_kwargs()
    assert mme["cross_beta"] == 0.1 and get_method("sparsezip", **mme).cfg.cross_beta == 0.1
    assert cases["mme[m]-sparsezip-notext-k16"].method_kwargs()["cross_beta"] == 0.0  # the switch wins
    pope = get_method("sparsezip", **cases["pope-random[m]-sparsezip-k16"].method_kwargs()).cfg
    assert pope == get_method("sparsezip", budget=16).cfg.replace(dynamic_k=True, skip_dynamic_k=True,
                                                                   dynk=pope.dynk)  # the default, in effect
    dynk = get_method("sparsezip", **{**cases["docvqa[m]-sparsezip-dynk-k16"].method_kwargs(), "k_min": 8, "k_max": 16})
    assert dynk._dynamic(dynk.cfg)  # the row turns dynamic K on against the preset's skip_dynamic_k


def test_row_names_are_id_safe() -> None:
    for row in matrix_rows():
        assert re.fullmatch(r"[a-z0-9_-]+", row.name)  # `_`: issue 11 names a method prumerge_plus


@pytest.mark.filterwarnings("ignore::sparsezip.methods.llm_budget.BudgetWarning")
@pytest.mark.parametrize("name", EMBEDDED_MODEL_NAMES)
def test_embedded_models_have_an_expectation_for_every_case(name: str) -> None:
    """A new row or dataset must come with recorded expectations (`pytest benchmarks --update-expected`), for
    every embedded family; cases the benchmark skips because the method cannot run on the model have none (an
    in-LLM layer-averaged budget out of reach runs the paper's nominal setting instead, with a warning; the
    family adapter's skips, e.g. dynamic-K calibration on LLaVA-NeXT, are the collection's)."""
    from types import SimpleNamespace

    from transformers import AutoConfig

    from sparsezip.adapters.registry import checkpoint_adapter, embedded_model
    from sparsezip.bench.cases import unreachable_reason
    from sparsezip.bench.expectations import ExpectationStore
    from sparsezip.bench.matrix import checkpoint_num_patches, unsupported_reason
    from sparsezip.methods import get_method, method_class

    path = embedded_model(name).path
    patches = checkpoint_num_patches(path)
    adapter = checkpoint_adapter(path)
    cases = [c for c in build_matrix(name, patches) if unsupported_reason(c, adapter) is None]
    model = SimpleNamespace(nominal_visual_tokens=patches, config=AutoConfig.from_pretrained(path))
    in_llm = [c for c in cases if method_class(c.row.method).stage == "llm"]
    skipped = {c.id for c in in_llm if unreachable_reason(get_method(c.row.method, **c.method_kwargs()), model)}
    runnable = [c for c in cases if c.id not in skipped]
    assert not skipped
    root = Path(__file__).resolve().parents[1]
    recorded = ExpectationStore(root / "fixtures" / "expected" / f"{name}.json").load()
    assert sorted(recorded) == sorted(c.id for c in runnable)
    assert {entry["device"] for entry in recorded.values()} == {"cpu"}


def test_unsupported_reasons_per_family() -> None:
    """The rows a family cannot run, with the reason the matrix skips them by: Qwen2.5-VL has no CLS for
    PruMerge+, LLaVA-NeXT budgets per crop so dynamic-K calibration does not apply; LLaVA-1.5 runs every row."""
    from sparsezip.adapters.registry import adapter_for
    from sparsezip.bench.matrix import unsupported_reason

    rows = {row.name: row for row in matrix_rows()}
    def reason(model_type: str, row: str) -> str | None:
        from sparsezip.bench.matrix import Case
        return unsupported_reason(Case("pope-random", "m", rows[row], 64, 16), adapter_for(model_type))

    assert all(reason("llava", name) is None for name in rows)
    assert "needs attention of kind ('cls',)" in reason("qwen2_5_vl", "prumerge_plus")
    assert reason("qwen2_5_vl", "visionzip") is None
    assert "dynamic-K calibration" in reason("llava_next", "sparsezip-dynk")
    assert reason("llava_next", "prumerge_plus") is None
