"""How the benchmark matrix runs a method, declared on the method class (``CompressionMethod.benchmark``).

The matrix (``sparsezip/bench/matrix.py``) derives its rows from the registry: every registered method gives a
plain row at its ``budgets`` and one row per :class:`Ablation`, so a new method file is in the matrix with no
other edit. Budgets are in the LLaVA-1.5 scale (64 / 128 / 192 of 576 patches = 1/9, 2/9, 1/3 of the tokens)
and mapped to each model's patch count by the matrix; :data:`FULL_BUDGET` means "every patch" (``none``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

LLAVA15_PATCHES = 576
LLAVA15_BUDGETS: tuple[int, ...] = (64, 128, 192)
# `none` feeds every patch; in the LLaVA-1.5 scale that is the full 576 (so `--budgets 576` selects it).
FULL_BUDGET = LLAVA15_PATCHES


@dataclass(frozen=True)
class Ablation:
    """One extra matrix row of a method: ``<method>-<name>`` with ``config`` overrides.

    Attributes:
        name: the row name's suffix (``notext`` -> ``sparsezip-notext``); lowercase letters and digits.
        config: keyword overrides for ``get_method`` besides ``budget`` (the ablation switch).
        llava_budgets: budgets (LLaVA-1.5 scale); ablations run at 64 by default, where compression hurts most.
        calibrate_dynamic_k: the row turns dynamic K on with ``dynk.c`` calibrated on a few images of the
            dataset so the mean K hits the budget (the benchmark does the calibration).
    """

    name: str
    config: Mapping[str, object] = field(default_factory=dict)
    llava_budgets: tuple[int, ...] = (64,)
    calibrate_dynamic_k: bool = False

    def __post_init__(self) -> None:
        if not self.name.isalnum() or self.name.lower() != self.name:
            raise ValueError(f"ablation name {self.name!r} must be lowercase letters and digits")
        _check_budgets(self.name, self.llava_budgets)


@dataclass(frozen=True)
class BenchmarkRows:
    """A method's place in the benchmark matrix.

    Attributes:
        budgets: budgets of the plain row, in the LLaVA-1.5 scale (``()`` = no plain row).
        ablations: extra rows, in report order after the plain row.
        order: position of the method's rows in reports (ascending; ties by name). The built-in order is
            ``none`` 0, ``sparsezip`` 10, ``visionzip`` 20, ``sparsevlm`` 30, ``fastv`` 32, ``pdrop`` 34,
            ``dart`` 36, ``random`` 40, ``pool`` 50; a
            method that says nothing comes after them.
        dataset_config: ``dataset family -> config`` every row of the method starts from on that dataset (the
            row's switches and the budget go on top), e.g. a method's published per-dataset settings; called
            when a case is built, never at import. ``None``: the method's defaults everywhere.
    """

    budgets: tuple[int, ...] = (64,)
    ablations: tuple[Ablation, ...] = ()
    order: int = 100
    dataset_config: Callable[[str], Mapping[str, object]] | None = None

    def __post_init__(self) -> None:
        _check_budgets("benchmark", self.budgets)
        names = [a.name for a in self.ablations]
        if len(set(names)) != len(names):
            raise ValueError(f"ablation names repeat: {names}")


def _check_budgets(what: str, budgets: tuple[int, ...]) -> None:
    bad = [b for b in budgets if not (isinstance(b, int) and 1 <= b <= LLAVA15_PATCHES)]
    if bad:
        raise ValueError(f"{what}: budgets {bad} are not LLaVA-1.5-scale token counts in [1, {LLAVA15_PATCHES}]")


def ablation_of(rows: BenchmarkRows, config: Mapping[str, object]) -> str | None:
    """The name of the ablation whose every switch ``config`` (a method's ``config()``) carries, or ``None``:
    how a report names the row of a run that recorded only its method and config (``sparsezip eval``)."""
    matching = [a.name for a in rows.ablations
                if a.config and all(config.get(k, object()) == v for k, v in a.config.items())]
    return "-".join(matching) or None


# The matrix row of an in-LLM method's paper settings (`<method>-paper`): its own "N-token" meaning of the budget
# (FastV's kept count, DART's truncation, SparseVLM's schedules) next to the layer-averaged plain row
# (sparsezip/methods/llm_budget.py).
PAPER_ABLATION = Ablation("paper", {"budget_mode": "nominal"}, llava_budgets=LLAVA15_BUDGETS)
