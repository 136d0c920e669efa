"""Adding a vision-side method is one file: a throwaway method registered here (after collection) shows up in
``sparsezip methods``, meets the contract checker and gets its declared benchmark rows, with no other edit."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch

from sparsezip.bench.matrix import build_matrix, matrix_rows
from sparsezip.cli import main
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.methods import (
    Ablation,
    BenchmarkRows,
    CompressionMethod,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)
from sparsezip.methods.rows import ablation_of
from sparsezip.selection import topk_mask
from sparsezip.testing.contract import check_budget, check_method
from sparsezip.testing.methods import keep_patches

NAME = "test-norm"


class KeepLargestNorm(CompressionMethod):
    """The whole "new method file": keep the ``budget`` patches of largest (or smallest) L2 norm."""

    name = NAME
    benchmark = BenchmarkRows(budgets=(64, 128), ablations=(Ablation("smallest", {"largest": False}),))

    def __init__(self, budget: int | None = None, largest: bool = True) -> None:
        if budget is not None and budget < 1:
            raise ValueError(f"{NAME}: budget must be >= 1, got {budget}")
        self.budget, self.largest = budget, largest

    def compress(self, ctx: VisionContext) -> CompressionResult:
        budget = 16 if self.budget is None else self.budget
        if budget > ctx.num_patches:
            raise ValueError(f"{NAME}: budget {budget} exceeds the {ctx.num_patches} patches")
        norms = ctx.hidden[:, 1:].float().norm(dim=-1)
        return keep_patches(ctx, topk_mask(norms if self.largest else -norms, budget))

    def config(self) -> dict:
        return {"budget": self.budget, "largest": self.largest}


@pytest.fixture
def registered() -> Iterator[type[CompressionMethod]]:
    register_method(KeepLargestNorm)
    yield KeepLargestNorm
    unregister_method(NAME)


def _ctx() -> VisionContext:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 1 + 144, 8, generator=g)
    return VisionContext(hidden=hidden, keys=torch.randn(2, 145, 4, generator=g),
                         cls_attn=torch.softmax(torch.randn(2, 2, 145, generator=g), dim=-1))


def test_a_registered_method_is_listed_checked_and_in_the_matrix(
        registered: type[CompressionMethod], capsys: pytest.CaptureFixture[str]) -> None:
    assert NAME in list_methods()
    assert main(["methods"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(NAME))
    assert f"bench={NAME}@64/128 {NAME}-smallest@64" in line
    assert main(["methods", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)[NAME]
    assert listed["benchmark"] == {"budgets": [64, 128], "ablations": {f"{NAME}-smallest": [64]}}

    result = check_method(get_method(NAME, budget=16), _ctx())  # the generic contract, called directly
    assert result.lengths.tolist() == [16, 16]
    check_budget(registered, _ctx(), 20)

    ids = [c.id for c in build_matrix("tiny-shapes", 144, datasets=["pope-adversarial"])]
    mine = [i for i in ids if NAME in i]
    assert mine == [f"pope-adversarial[tiny-shapes]-{NAME}-k16", f"pope-adversarial[tiny-shapes]-{NAME}-k32",
                    f"pope-adversarial[tiny-shapes]-{NAME}-smallest-k16"]
    assert ids.index(mine[0]) > ids.index("pope-adversarial[tiny-shapes]-pool-k16")  # undeclared order: last
    [case] = build_matrix("m", 144, methods=[f"{NAME}-smallest"], datasets=["mme"])
    assert case.method_kwargs() == {"largest": False, "budget": 16}


def test_the_built_in_rows_keep_their_report_order() -> None:
    assert [r.name for r in matrix_rows()] == [
        "none", "sparsezip", "sparsezip-nohybrid", "sparsezip-notext", "sparsezip-dynk", "sparsezip-nomerge",
        "visionzip", "sparsevlm", "sparsevlm-paper", "fastv", "fastv-paper", "pdrop", "pdrop-paper", "dart",
        "dart-paper", "random", "pool",
        "tome", "divprune", "prumerge_plus", "vispruner", "cdpruner", "cdpruner-pluscos"]
    paper = next(r for r in matrix_rows() if r.name == "fastv-paper")  # in-LLM methods' paper N-token settings
    assert dict(paper.config) == {"budget_mode": "nominal"} and paper.llava_budgets == (64, 128, 192)
    dynk = next(r for r in matrix_rows() if r.name == "sparsezip-dynk")
    # skip_dynamic_k: False as well, since every row starts from the seed's preset, which sets it (K fixed)
    assert dynk.calibrate_dynamic_k and dict(dynk.config) == {"dynamic_k": True, "skip_dynamic_k": False}
    assert dynk.llava_budgets == (64,)


def test_unregistering_removes_the_rows(registered: type[CompressionMethod]) -> None:
    unregister_method(NAME)
    assert NAME not in {r.method for r in matrix_rows()}
    with pytest.raises(ValueError, match="is not registered"):
        unregister_method(NAME)
    register_method(registered)  # for the fixture's teardown


def test_row_declarations_are_validated() -> None:
    with pytest.raises(ValueError, match="budgets \\[0\\]"):
        BenchmarkRows(budgets=(0,))
    with pytest.raises(ValueError, match="lowercase"):
        Ablation("No-Text")
    with pytest.raises(ValueError, match="repeat"):
        BenchmarkRows(ablations=(Ablation("a"), Ablation("a")))


def test_ablation_of_names_the_switches_a_config_carries() -> None:
    rows = get_method("sparsezip").benchmark
    config = get_method("sparsezip", budget=64, cross_beta=0.0).config()
    assert ablation_of(rows, config) == "notext"
    assert ablation_of(rows, get_method("sparsezip", budget=64).config()) is None
    both = get_method("sparsezip", budget=64, cross_beta=0.0, skip_ctx_merge=True).config()
    assert ablation_of(rows, both) == "notext-nomerge"
