"""Paired statistics: bootstrap CIs, exact McNemar, loyalty, and the per-dataset units of ``sparsezip compare``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparsezip import metrics
from sparsezip.eval.compare import compare_records, docvqa_units, mme_units, pope_units
from sparsezip.eval.stats import loyalty, mcnemar_exact, paired_bootstrap

ANSWERS = st.sampled_from(["Yes", "No", "yes.", "No, there is not.", "maybe"])


@st.composite
def pope_runs(draw: st.DrawFn, categories: tuple[str, ...] = ("adversarial",)) -> tuple[list[dict], list[dict]]:
    """Two runs' POPE records on the same questions (labels shared, predictions independent)."""
    n = draw(st.integers(4, 40))
    cats = [draw(st.sampled_from(categories)) for _ in range(n)]
    labels = [draw(st.sampled_from(["yes", "no"])) for _ in range(n)]

    def run() -> list[dict]:
        return [{"question_id": i, "category": c, "answers": [lab], "prediction": draw(ANSWERS)}
                for i, (c, lab) in enumerate(zip(cats, labels, strict=True))]

    return run(), run()


def _mcnemar_by_hand(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize(("a_only", "b_only", "expected"), [
    (0, 0, 1.0), (0, 5, 0.0625), (5, 0, 0.0625), (1, 9, 0.021484375), (3, 3, 1.0), (2, 4, 0.6875),
])
def test_mcnemar_exact_small_cases(a_only: int, b_only: int, expected: float) -> None:
    a = [True] * a_only + [False] * b_only + [True, False]  # two concordant units as well
    b = [False] * a_only + [True] * b_only + [True, False]
    result = mcnemar_exact(a, b)
    assert result.p_value == pytest.approx(expected, abs=1e-12)
    assert result.p_value == pytest.approx(_mcnemar_by_hand(a_only, b_only), abs=1e-12)
    assert (result.a_only, result.b_only, result.discordant, result.n) == (a_only, b_only, a_only + b_only,
                                                                          a_only + b_only + 2)


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_mcnemar_matches_the_exact_formula(pairs: list[tuple[bool, bool]]) -> None:
    a, b = zip(*pairs, strict=True)
    result = mcnemar_exact(a, b)
    assert result.p_value == pytest.approx(_mcnemar_by_hand(result.a_only, result.b_only), rel=1e-9)
    assert mcnemar_exact(b, a).p_value == result.p_value


@given(pope_runs())
def test_a_run_against_itself_is_zero_with_p_one(runs: tuple[list[dict], list[dict]]) -> None:
    records, _ = runs
    result = compare_records("pope", records, records, n_resamples=200)
    assert (result["delta"], result["ci_low"], result["ci_high"], result["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    assert result["loyalty"] == 1.0 and result["discordant"] == 0


@given(pope_runs(("random", "popular", "adversarial")))
def test_swapping_runs_negates_delta_and_keeps_p(runs: tuple[list[dict], list[dict]]) -> None:
    a, b = runs
    ab = compare_records("pope", a, b, n_resamples=300, seed=3)
    ba = compare_records("pope", b, a, n_resamples=300, seed=3)
    assert ba["delta"] == pytest.approx(-ab["delta"], abs=1e-12)
    assert ba["ci_low"] == pytest.approx(-ab["ci_high"], abs=1e-9)
    assert ba["ci_high"] == pytest.approx(-ab["ci_low"], abs=1e-9)
    assert ba["p_value"] == ab["p_value"] and ba["loyalty"] == ab["loyalty"]


@given(pope_runs(("random", "adversarial")), st.integers(0, 2**31))
def test_bootstrap_is_deterministic_for_a_seed(runs: tuple[list[dict], list[dict]], seed: int) -> None:
    a, b = runs
    assert compare_records("pope", a, b, n_resamples=100, seed=seed) == \
        compare_records("pope", a, b, n_resamples=100, seed=seed)


@given(pope_runs(("random", "popular", "adversarial")))
def test_pope_point_estimates_are_the_reported_metric(runs: tuple[list[dict], list[dict]]) -> None:
    records, _ = runs
    units = pope_units(records)
    by_cat: dict[str, tuple[list[str], list[str]]] = {}
    for r in records:
        preds, labels = by_cat.setdefault(r["category"], ([], []))
        preds.append(r["prediction"])
        labels.append(r["answers"][0])
    report = metrics.pope_report(by_cat)
    expected = report["f1"] if len(by_cat) == 1 else report["mean_f1"]
    assert float(units.metric(units.stats.sum(0))) == pytest.approx(expected, abs=1e-12)


def test_mme_units_resample_images_and_give_the_total_score() -> None:
    rng = np.random.default_rng(0)
    records = []
    for subtask in ("count", "position"):
        for image in range(6):
            for k, label in enumerate(("Yes", "No")):
                records.append({"question_id": f"{subtask}/{image:03d}.jpg#{k}", "answers": [label],
                                "prediction": str(rng.choice(["Yes", "No"]))})
    units = mme_units(records)
    items = [(r["question_id"].split("/")[0], r["question_id"].split("#")[0], r["prediction"], r["answers"][0])
             for r in records]
    official = metrics.mme_metrics(items)
    assert units.stats.shape[0] == 12  # units are images (6 per subtask), not questions
    assert float(units.metric(units.stats.sum(0))) == pytest.approx(official["perception"], abs=1e-9)


def test_docvqa_units_give_anls() -> None:
    records = [{"question_id": i, "answers": [ans], "prediction": pred}
               for i, (ans, pred) in enumerate([("12.50", "12.50"), ("SMITH", "smith"), ("BOSTON", "BOSTN"),
                                                ("01/02/2000", "nothing")])]
    units = docvqa_units(records)
    expected = metrics.docvqa_metrics([r["prediction"] for r in records], [r["answers"] for r in records])
    assert float(units.metric(units.stats.sum(0))) == pytest.approx(expected["anls"])
    assert units.correct.tolist() == [True, True, False, False]


def test_bootstrap_interval_covers_a_known_difference() -> None:
    """B is right on 90% of 400 questions, A on 60%: the 95% CI of the accuracy difference is around 0.3."""
    a = np.array([[1.0, 1.0]] * 240 + [[0.0, 1.0]] * 160)
    b = np.array([[1.0, 1.0]] * 360 + [[0.0, 1.0]] * 40)
    result = paired_bootstrap(a, b, lambda s: s[..., 0] / s[..., 1], n_resamples=2000)
    assert result.delta == pytest.approx(0.3)
    assert 0.2 < result.ci_low < 0.3 < result.ci_high < 0.4


def test_loyalty_and_retained_correct() -> None:
    assert loyalty(["yes", "no", "no", "yes"], ["yes", "no", "yes", "yes"]) == (0.75, None)
    same, kept = loyalty(["yes", "no", "no"], ["yes", "yes", "no"], [True, True, False], [True, False, True])
    assert same == pytest.approx(2 / 3) and kept == pytest.approx(0.5)


def test_bad_inputs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="different question sets"):
        compare_records("pope", [{"question_id": 1, "category": "random", "answers": ["yes"], "prediction": "Yes"}],
                        [{"question_id": 2, "category": "random", "answers": ["yes"], "prediction": "Yes"}])
    with pytest.raises(ValueError, match="no paired comparison"):
        compare_records("coco_captions", [], [])
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap(np.ones((2, 1)), np.ones((2, 1)), lambda s: s[..., 0], n_resamples=0)
    with pytest.raises(ValueError, match=r"\[n\]"):
        mcnemar_exact([True, False], [True])
