"""The benchmark matrix: datasets x model x method rows, as plain data (no pytest, no model loading).

``benchmarks/test_matrix.py`` parametrizes over :func:`build_matrix`; ``tests/`` checks the case list here.

Budgets are written in the LLaVA-1.5 scale (64 / 128 / 192 of 576 patches = 1/9, 2/9, 1/3 of the tokens)
and mapped to the model's own patch count with :func:`scale_budget`, so a 144-patch tiny model runs the same
*relative* budgets (16 / 32 / 48). Cases are named by the resulting token count: ``visionzip-k16`` on the
tiny model, ``visionzip-k64`` on llava-1.5. A case id reads
``pope-adversarial[tiny-shapes]-sparsezip-k16`` so ``-k pope``, ``-k adversarial``, ``-k visionzip`` and
``-k k16`` select what they say.

Nothing here names a dataset or a method: the datasets are the dataset table's benchmark names
(``sparsezip.data.registry.benchmark_datasets``) and the rows come from the method registry, each method
declaring its budgets and ablations (``CompressionMethod.benchmark``, ``sparsezip/methods/rows.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sparsezip.data.registry import benchmark_datasets, dataset_spec
from sparsezip.methods import list_methods, method_class
from sparsezip.methods.rows import FULL_BUDGET, LLAVA15_BUDGETS, LLAVA15_PATCHES  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from sparsezip.adapters.registry import ModelAdapter

DEFAULT_MODEL_NAME = "tiny-shapes"
# Without --model-path the matrix runs on every embedded family (``-k qwen``, ``-k llava-next`` select one).
EMBEDDED_MODEL_NAMES: tuple[str, ...] = (DEFAULT_MODEL_NAME, "tiny-llava-next", "tiny-qwen2.5-vl")


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


def matrix_rows() -> tuple[Row, ...]:
    """The rows, in report order, derived from the method registry: each method's plain row at its declared
    budgets, then one row per declared ablation (``CompressionMethod.benchmark``); methods ordered by their
    declared ``order``, ties by name (today: none, sparsezip + ablations, visionzip, sparsevlm, random, pool)."""
    classes = sorted((method_class(name) for name in list_methods()), key=lambda c: (c.benchmark.order, c.name))
    rows: list[Row] = []
    for cls in classes:
        declared = cls.benchmark
        if declared.budgets:
            rows.append(Row(cls.name, cls.name, llava_budgets=declared.budgets))
        rows.extend(Row(f"{cls.name}-{a.name}", cls.name, dict(a.config), a.llava_budgets, a.calibrate_dynamic_k)
                    for a in declared.ablations)
    return tuple(rows)


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
        dataset: benchmark dataset name (``pope-random``, ``mme``, ...); ``family`` names its table row.
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
        return dataset_spec(self.dataset).family

    @property
    def id(self) -> str:
        """``pope-adversarial[tiny-shapes]-sparsezip-k16``; ``none`` carries no budget suffix."""
        suffix = "" if self.budget is None else f"-k{self.budget}"
        return f"{self.dataset}[{self.model}]-{self.row.name}{suffix}"

    def method_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``get_method(self.row.method, ...)``: the method's base config for this dataset
        (``BenchmarkRows.dataset_config``; SparseZip: the seed's preset, so ``cross_beta`` 0.1 on MME), then the
        row's config, plus the budget in the model's own tokens (for SparseVLM, the layer-averaged equivalent),
        when set."""
        base = method_class(self.row.method).benchmark.dataset_config
        kwargs: dict[str, object] = dict(base(self.family)) if base is not None else {}
        kwargs.update(self.row.config)
        if self.budget is not None:
            kwargs["budget"] = self.budget
        return kwargs


def row_names() -> list[str]:
    """Every row name, in report order."""
    return [row.name for row in matrix_rows()]


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
    datasets: Iterable[str] | None = None,
    methods: Iterable[str] | None = None,
    llava_budgets: Iterable[int] | None = None,
) -> list[Case]:
    """Every case for ``model`` (with ``num_patches`` patch tokens), optionally narrowed.

    Args:
        model: name used in case ids.
        num_patches: the model's uncompressed visual tokens per image (576 for LLaVA-1.5, 144 for tiny-shapes).
        datasets: benchmark dataset names (default: all of ``benchmark_datasets()``, the dataset table's).
        methods: keep rows whose registry method *or* row name is listed (``sparsezip`` keeps every
            SparseZip row including the ablations; ``sparsezip-notext`` keeps just that one).
        llava_budgets: keep cases at these LLaVA-1.5-scale budgets (64 / 128 / 192; 576 = ``none``).

    Returns:
        Cases ordered dataset-major, then rows in :func:`matrix_rows` order, then budget.
    """
    known = benchmark_datasets()
    datasets = known if datasets is None else list(datasets)
    _check_filter("dataset", datasets, known)
    rows = matrix_rows()
    methods = None if methods is None else list(methods)
    if methods is not None:
        _check_filter("method", methods, dict.fromkeys([r.method for r in rows] + [r.name for r in rows]))
    budgets = None if llava_budgets is None else list(llava_budgets)
    if budgets is not None:
        _check_filter("budget (LLaVA-1.5 scale)", budgets, sorted({b for r in rows for b in r.llava_budgets}))

    cases = []
    for dataset in datasets:
        for row in rows:
            if methods is not None and row.method not in methods and row.name not in methods:
                continue
            for llava_budget in row.llava_budgets:
                if budgets is not None and llava_budget not in budgets:
                    continue
                budget = None if llava_budget == FULL_BUDGET else scale_budget(llava_budget, num_patches)
                cases.append(Case(dataset, model, row, llava_budget, budget))
    return cases


def unsupported_reason(case: Case, adapter: ModelAdapter) -> str | None:
    """Why the model family of ``adapter`` cannot run ``case``'s row at all (the matrix skips it, saying so), or
    ``None``: a stage the adapter does not run, dynamic-K calibration where budgets are per crop, or a method
    that needs an attention kind the family's contexts do not carry."""
    cls = method_class(case.row.method)
    if cls.stage not in adapter.stages:
        return f"{adapter.family}: no {cls.stage}-stage methods yet (vision-side only)"
    if case.row.calibrate_dynamic_k and not adapter.calibrates_dynamic_k:
        return f"{adapter.family}: dynamic-K calibration is per image, budgets per crop"
    if cls.stage == "vision" and cls.needs_attention and adapter.attention_source not in cls.attention_sources:
        return (f"{adapter.family}: {case.row.method} needs attention of kind {cls.attention_sources}, the model "
                f"gives {adapter.attention_source!r}")
    return None


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
