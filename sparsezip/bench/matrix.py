"""The benchmark matrix: datasets x model x method rows, as plain data (no pytest, no model loading).

``benchmarks/test_matrix.py`` parametrizes over :func:`build_matrix`; ``tests/`` checks the case list here.

Budgets are written in the LLaVA-1.5 scale (64 / 128 / 192 of 576 patches = 1/9, 2/9, 1/3 of the tokens)
and mapped to the model's own patch count with :func:`scale_budget`, so a 144-patch tiny model runs the same
*relative* budgets (16 / 32 / 48). Cases are named by the resulting token count: ``visionzip-k16`` on the
tiny model, ``visionzip-k64`` on llava-1.5. A case id reads
``pope-adversarial[tiny-shapes]-sparsezip-k16`` so ``-k pope``, ``-k adversarial``, ``-k visionzip`` and
``-k k16`` select what they say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

LLAVA15_PATCHES = 576
LLAVA15_BUDGETS: tuple[int, ...] = (64, 128, 192)
# `none` feeds every patch; in the LLaVA-1.5 scale that is the full 576 (so `--budgets 576` selects it).
FULL_BUDGET = LLAVA15_PATCHES
DATASETS: tuple[str, ...] = ("pope-random", "pope-popular", "pope-adversarial", "mme", "docvqa")
DEFAULT_MODEL_NAME = "tiny-shapes"


@dataclass(frozen=True)
class Row:
    """One method row of the matrix: a registered method plus config overrides, at some budgets.

    Attributes:
        name: the row's name in case ids (``sparsezip-notext``); equals ``method`` for plain rows.
        method: the registry name handed to ``get_method``.
        config: keyword overrides for ``get_method`` besides ``budget`` (the ablation switches).
        llava_budgets: budgets in the LLaVA-1.5 scale this row runs at; ``(FULL_BUDGET,)`` for ``none``.
        calibrate_dynamic_k: the row turns dynamic K on, with ``dynk.c`` calibrated on a few images of the
            dataset so that the mean K hits the budget (the benchmark does the calibration).
    """

    name: str
    method: str
    config: Mapping[str, object] = field(default_factory=dict)
    llava_budgets: tuple[int, ...] = (64,)
    calibrate_dynamic_k: bool = False


# SparseZip rows start from the seed's preset for the dataset (its config/sparsezip_<dataset>.yaml as it ran:
# cross_beta 0.1 on MME, otherwise the package defaults in effect), then apply the row's switches.
SPARSEZIP_PRESETS: Mapping[str, str] = {"pope": "pope", "mme": "mme", "docvqa": "docvqa"}

# The rows, in report order. Ablations run at the 64-equivalent budget, where compression hurts most.
ROWS: tuple[Row, ...] = (
    Row("none", "none", llava_budgets=(FULL_BUDGET,)),
    Row("sparsezip", "sparsezip", llava_budgets=LLAVA15_BUDGETS),
    Row("sparsezip-nohybrid", "sparsezip", {"skip_hybrid_attn": True}),
    Row("sparsezip-notext", "sparsezip", {"cross_beta": 0.0}),
    Row("sparsezip-dynk", "sparsezip", {"dynamic_k": True, "skip_dynamic_k": False}, calibrate_dynamic_k=True),
    Row("sparsezip-nomerge", "sparsezip", {"skip_ctx_merge": True}),
    Row("visionzip", "visionzip", llava_budgets=LLAVA15_BUDGETS),
    Row("sparsevlm", "sparsevlm", llava_budgets=LLAVA15_BUDGETS),
    Row("random", "random"),
    Row("pool", "pool"),
)


def scale_budget(llava_budget: int, num_patches: int) -> int:
    """Map a budget in the LLaVA-1.5 scale (of 576 patches) to a model with ``num_patches`` patches.

    ``round(llava_budget * num_patches / 576)``: 64 / 128 / 192 -> 16 / 32 / 48 on 144 patches,
    7 / 14 / 21 on 64 patches; 576 -> ``num_patches``.
    """
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    if not 1 <= llava_budget <= LLAVA15_PATCHES:
        raise ValueError(f"a LLaVA-1.5-scale budget must be in [1, {LLAVA15_PATCHES}], got {llava_budget}")
    tokens = round(llava_budget * num_patches / LLAVA15_PATCHES)
    if tokens < 1:
        raise ValueError(
            f"budget {llava_budget}/{LLAVA15_PATCHES} is less than one token on a model with {num_patches} patches"
        )
    return tokens


@dataclass(frozen=True)
class Case:
    """One benchmark case: evaluate ``row`` at ``budget`` tokens on ``dataset`` with ``model``.

    Attributes:
        dataset: benchmark dataset name (``pope-random``, ``mme``, ...); family = part before the first '-'.
        model: the model's name in ids (``tiny-shapes``, or the checkpoint folder's name).
        row: the method row.
        llava_budget: the budget in the LLaVA-1.5 scale (``FULL_BUDGET`` for ``none``).
        budget: visual tokens per image on this model (``None`` for ``none``: the method's own default).
    """

    dataset: str
    model: str
    row: Row
    llava_budget: int
    budget: int | None

    @property
    def family(self) -> str:
        return self.dataset.split("-")[0]

    @property
    def id(self) -> str:
        """``pope-adversarial[tiny-shapes]-sparsezip-k16``; ``none`` carries no budget suffix."""
        suffix = "" if self.budget is None else f"-k{self.budget}"
        return f"{self.dataset}[{self.model}]-{self.row.name}{suffix}"

    def method_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``get_method(self.row.method, ...)``: for SparseZip rows the dataset's seed
        preset (:data:`SPARSEZIP_PRESETS`), then the row's config, plus the budget in the model's own tokens
        (for SparseVLM, the layer-averaged equivalent), when set."""
        kwargs: dict[str, object] = {}
        if self.row.method == "sparsezip" and self.family in SPARSEZIP_PRESETS:
            from sparsezip.methods.sparsezip.config import load_preset

            kwargs.update(load_preset(SPARSEZIP_PRESETS[self.family]))
        kwargs.update(self.row.config)
        if self.budget is not None:
            kwargs["budget"] = self.budget
        return kwargs


def row_names() -> list[str]:
    """Every row name, in report order."""
    return [row.name for row in ROWS]


def _check_filter(kind: str, given: Iterable[object], allowed: Iterable[object]) -> None:
    unknown = [value for value in given if value not in set(allowed)]
    if unknown:
        raise ValueError(
            f"unknown {kind} {', '.join(map(str, unknown))}; choose from {', '.join(map(str, allowed))}"
        )


def build_matrix(
    model: str,
    num_patches: int,
    *,
    datasets: Iterable[str] = DATASETS,
    methods: Iterable[str] | None = None,
    llava_budgets: Iterable[int] | None = None,
) -> list[Case]:
    """Every case for ``model`` (with ``num_patches`` patch tokens), optionally narrowed.

    Args:
        model: name used in case ids.
        num_patches: the model's uncompressed visual tokens per image (576 for LLaVA-1.5, 144 for tiny-shapes).
        datasets: benchmark dataset names, a subset of :data:`DATASETS`.
        methods: keep rows whose registry method *or* row name is listed (``sparsezip`` keeps every
            SparseZip row including the ablations; ``sparsezip-notext`` keeps just that one).
        llava_budgets: keep cases at these LLaVA-1.5-scale budgets (64 / 128 / 192; 576 = ``none``).

    Returns:
        Cases ordered dataset-major, then rows in :data:`ROWS` order, then budget.
    """
    datasets = list(datasets)
    _check_filter("dataset", datasets, DATASETS)
    methods = None if methods is None else list(methods)
    if methods is not None:
        _check_filter("method", methods, dict.fromkeys([r.method for r in ROWS] + row_names()))
    budgets = None if llava_budgets is None else list(llava_budgets)
    if budgets is not None:
        _check_filter("budget (LLaVA-1.5 scale)", budgets, (*LLAVA15_BUDGETS, FULL_BUDGET))

    cases = []
    for dataset in datasets:
        for row in ROWS:
            if methods is not None and row.method not in methods and row.name not in methods:
                continue
            for llava_budget in row.llava_budgets:
                if budgets is not None and llava_budget not in budgets:
                    continue
                budget = None if llava_budget == FULL_BUDGET else scale_budget(llava_budget, num_patches)
                cases.append(Case(dataset, model, row, llava_budget, budget))
    return cases


def model_name(model_path: str | Path) -> str:
    """A checkpoint's name in case ids: a registered embedded model's name as given (``tiny-shapes``), its
    folder's name, or the repository name for a Hugging Face cache snapshot
    (``models--llava-hf--llava-1.5-7b-hf/snapshots/<hash>`` -> ``llava-1.5-7b-hf``)."""
    from sparsezip.adapters.registry import resolve_model

    path, name = resolve_model(model_path)
    if name != path.name:  # a registered name
        return name
    path = path.resolve()
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.split("--")[-1]
    return path.name


def checkpoint_num_patches(model_path: str | Path) -> int:
    """The checkpoint's nominal visual tokens per image (what LLaVA-1.5-scale budgets are mapped by), from its
    ``config.json`` alone through its adapter (no model loading): 576 for LLaVA-1.5, 144 for tiny-shapes."""
    from sparsezip.adapters.registry import nominal_visual_tokens

    return nominal_visual_tokens(model_path)
