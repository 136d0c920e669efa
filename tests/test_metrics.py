"""Metrics against hand-computed values, the real POPE label files and properties that follow from each
metric's definition. The reference tools' own outputs on edge cases are checked in ``test_metrics_golden.py``
(no code of theirs is in this project)."""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparsezip import metrics
from sparsezip.memory import kv_cache_bytes

POPE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "reference" / "pope"


answer_text = st.one_of(
    st.sampled_from(["Yes", "No", "yes", "no", " No", "NO", "yes.", "No, there is not.", "not sure", "Yes, no",
                     "There is no dog.", "", "n", "y", "nope", "yes\n", "maybe", "The answer is no."]),
    st.text(alphabet="yesnot .,YNa\n", max_size=12),
)  # fmt: skip


# --- POPE ----------------------------------------------------------------------------------------------
def test_pope_official_parser_hand_computed() -> None:
    preds = ["Yes", "No", "yes.", "no, there is not", "garbage", "NO"]
    labels = ["yes", "no", "no", "yes", "no", "yes"]
    # parsed: yes no yes no yes yes ("NO" is not one of the official words, so it counts as yes)
    m = metrics.pope_metrics(preds, labels)
    assert m == pytest.approx({"accuracy": 0.5, "precision": 0.5, "recall": 2 / 3, "f1": 4 / 7,
                               "yes_ratio": 4 / 6, "n": 6})


def test_pope_lmms_eval_parser_hand_computed() -> None:
    preds = ["Yes", "No", "yes.", "no, there is not", "garbage", "NO"]
    labels = ["yes", "no", "no", "yes", "no", "yes"]
    # parsed: yes no other other other no -> TP 1, TN 1, FN 1 (other is neither positive nor negative)
    m = metrics.pope_metrics(preds, labels, parser="lmms-eval")
    assert m == pytest.approx({"accuracy": 2 / 6, "precision": 1.0, "recall": 0.5, "f1": 2 / 3,
                               "yes_ratio": 1 / 6, "n": 6})


@pytest.mark.parametrize(("text", "parsed"), [
    (" No", "no"), ("Not sure", "yes"), ("There is no dog.", "no"), ("Yes. But no.", "yes"),
    ("no\n", "yes"), ("", "yes"), ("I do not think so", "no"),
])  # fmt: skip
def test_pope_official_parser_quirks(text: str, parsed: str) -> None:
    assert metrics.parse_pope_answer(text) == parsed


@given(st.lists(st.tuples(st.sampled_from(["Yes", "No"]), st.sampled_from(["yes", "no"])), min_size=1, max_size=40))
def test_pope_metrics_are_the_confusion_matrix_formulas(rows: list[tuple[str, str]]) -> None:
    predicted = [p.lower() for p, _ in rows]
    tp = sum(p == "yes" and g == "yes" for p, (_, g) in zip(predicted, rows, strict=True))
    fp = sum(p == "yes" and g == "no" for p, (_, g) in zip(predicted, rows, strict=True))
    fn = sum(p == "no" and g == "yes" for p, (_, g) in zip(predicted, rows, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    m = metrics.pope_metrics([p for p, _ in rows], [g for _, g in rows])
    assert m["accuracy"] == pytest.approx(sum(p == g for p, (_, g) in zip(predicted, rows, strict=True)) / len(rows))
    assert (m["precision"], m["recall"]) == pytest.approx((precision, recall))
    assert m["f1"] == pytest.approx(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    assert m["yes_ratio"] == pytest.approx(predicted.count("yes") / len(rows))


words = st.text(alphabet="aeinostNY", min_size=0, max_size=5)


@given(st.lists(words, min_size=1, max_size=6), st.text(alphabet="abc .,no", max_size=10))
def test_pope_official_parser_reads_the_words_of_the_first_sentence(ws: list[str], rest: str) -> None:
    first = " ".join(ws)
    expected = "no" if {"No", "no", "not"} & set(ws) else "yes"
    assert metrics.parse_pope_answer(first) == expected
    assert metrics.parse_pope_answer(first + "." + rest) == expected  # only the first sentence counts
    assert metrics.parse_pope_answer(",".join(first)) == expected  # commas are dropped before splitting


@given(answer_text)
def test_pope_official_parser_says_yes_without_a_no(text: str) -> None:
    if "no" not in text.lower():
        assert metrics.parse_pope_answer(text) == "yes"


@pytest.mark.parametrize("category", ["random", "popular", "adversarial"])
def test_all_yes_on_the_real_label_files(category: str) -> None:
    labels = [json.loads(line)["label"] for line in (POPE_DIR / f"coco_pope_{category}.json").open()]
    share_yes = labels.count("yes") / len(labels)
    m = metrics.pope_metrics(["Yes"] * len(labels), labels)
    assert m["precision"] == pytest.approx(share_yes)
    assert m["recall"] == 1.0
    assert m["accuracy"] == pytest.approx(share_yes)
    assert m["yes_ratio"] == 1.0
    assert m["n"] == len(labels) == (2910 if category == "random" else 3000)


def test_all_no_gives_zero_precision_instead_of_a_crash() -> None:
    m = metrics.pope_metrics(["No"] * 4, ["yes", "no", "no", "no"])
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == (0.0, 0.0, 0.0, 0.75)


def test_pope_report_mean_of_category_f1_and_pooled() -> None:
    data = {"random": (["Yes", "No"], ["yes", "no"]), "adversarial": (["Yes", "Yes"], ["yes", "no"])}
    report = metrics.pope_report(data)
    assert set(report) == {"categories", "mean_f1", "pooled"}
    assert report["categories"]["random"]["f1"] == 1.0
    assert report["categories"]["adversarial"]["f1"] == pytest.approx(2 / 3)
    assert report["mean_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert report["pooled"] == metrics.pope_metrics(["Yes", "No", "Yes", "Yes"], ["yes", "no", "yes", "no"])
    assert metrics.pope_report({"random": data["random"]}) == metrics.pope_metrics(*data["random"])


def test_pope_metric_class_accumulates_like_the_function() -> None:
    metric = metrics.PopeMetric()
    metric.update(["Yes"], ["yes"], "random")
    metric.update(["No", "Yes"], ["yes", "no"], "random")
    assert metric.compute() == metrics.pope_metrics(["Yes", "No", "Yes"], ["yes", "yes", "no"])


def test_pope_bad_input() -> None:
    with pytest.raises(ValueError, match="'maybe'"):
        metrics.pope_metrics(["Yes"], ["maybe"])
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        metrics.pope_metrics(["Yes", "No"], ["yes"])
    with pytest.raises(ValueError, match="unknown POPE parser 'x'"):
        metrics.PopeMetric("x")
    with pytest.raises(ValueError, match="at least one"):
        metrics.pope_metrics([], [])


# --- MME -----------------------------------------------------------------------------------------------
@given(answer_text)
def test_mme_parser_decides_on_the_first_four_characters(text: str) -> None:
    parsed = metrics.parse_mme_answer(text)
    assert parsed == metrics.parse_mme_answer(text.upper())  # case-insensitive
    if text.lower() in ("yes", "no"):
        assert parsed == text.lower()
    else:
        assert parsed == metrics.parse_mme_answer(text[:4] + "zzzz")  # nothing after the 4th character counts
        assert parsed == ("yes" if "yes" in text[:4].lower() else "no" if "no" in text[:4].lower() else "other")


def test_mme_pair_with_one_wrong_answer_counts_for_acc_not_acc_plus() -> None:
    items = [
        ("count", "count/a.jpg", "Yes", "Yes"), ("count", "count/a.jpg", "Yes", "No"),  # one wrong
        ("count", "count/b.jpg", "No", "No"), ("count", "count/b.jpg", "yes, two", "Yes"),  # both right
    ]  # fmt: skip
    result = metrics.mme_metrics(items)
    assert result["subtasks"] == {"count": pytest.approx({"acc": 75.0, "acc_plus": 50.0, "score": 125.0})}
    assert result["perception"] == pytest.approx(125.0)
    assert result["cognition"] is None


def test_mme_other_answers_are_wrong_and_groups_sum() -> None:
    items = [
        ("existence", "e/1", "maybe", "Yes"), ("existence", "e/1", "The answer is no", "No"),  # both other
        ("color", "c/1", "Yes", "Yes"), ("color", "c/1", "No", "No"),
        ("code_reasoning", "k/1", "no", "No"), ("code_reasoning", "k/1", "n", "Yes"),  # 'n' = other
    ]  # fmt: skip
    result = metrics.mme_metrics(items)
    assert result["subtasks"]["existence"] == {"acc": 0.0, "acc_plus": 0.0, "score": 0.0}
    assert result["subtasks"]["color"]["score"] == 200.0
    assert result["subtasks"]["code_reasoning"] == {"acc": 50.0, "acc_plus": 0.0, "score": 50.0}
    assert list(result["subtasks"]) == ["existence", "color", "code_reasoning"]  # official order
    assert (result["perception"], result["cognition"]) == (200.0, 50.0)
    assert metrics.parse_mme_answer("n", "lmms-eval") == "no"


def test_mme_class_and_bad_input() -> None:
    metric = metrics.MMEMetric()
    metric.update(["count", "count"], ["x", "x"], ["Yes", "No"], ["Yes", "No"])
    assert metric.compute()["subtasks"]["count"]["score"] == 200.0
    with pytest.raises(ValueError, match="unknown MME subtask 'dogs'"):
        metrics.mme_metrics([("dogs", "x", "yes", "yes")])
    with pytest.raises(ValueError, match="yes/no"):
        metrics.mme_metrics([("count", "x", "yes", "2")])


# --- ANLS / exact match --------------------------------------------------------------------------------
@pytest.mark.parametrize(("prediction", "answers", "expected"), [
    ("May 5, 1990", ["May 5, 1990"], 1.0),
    ("  may 5,   1990 ", ["May 5, 1990"], 1.0),  # trimmed, lowercased, whitespace collapsed
    ("  ab  ", ["abcd"], 1 - 2 / 6),  # distance on normalised strings over the *raw* length (6, not 4)
    ("ab", ["ac"], 0.5),  # exactly the threshold is kept
    ("abc", ["axy"], 0.0),  # 1/3 < 0.5 -> 0
    ("", [""], 1.0),
    ("", ["abc"], 0.0),
    ("abc", [""], 0.0),
    ("J Smith", ["J. Smith", "John Smith", "Smith"], 1 - 1 / 8),  # best of several answers
])  # fmt: skip
def test_anls_edge_cases(prediction: str, answers: list[str], expected: float) -> None:
    assert metrics.anls(prediction, answers) == pytest.approx(expected)


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance straight from its recursive definition (insert, delete, substitute: cost 1)."""

    @functools.cache
    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


@given(st.text(alphabet="aAbB  c\tß", max_size=8), st.lists(st.text(alphabet="aAbB  c\tß", max_size=8), min_size=1, max_size=3))
def test_anls_is_its_definition(prediction: str, answers: list[str]) -> None:
    def norm(s: str) -> str:
        return " ".join(s.strip().lower().split())

    def nl(answer: str) -> float:
        length = max(len(answer.upper()), len(prediction.upper()))
        return 0.0 if length == 0 else _edit_distance(norm(answer), norm(prediction)) / length

    score = 1 - min(nl(a) for a in answers)
    assert metrics.anls(prediction, answers) == pytest.approx(score if score >= 0.5 else 0.0)


def test_exact_match_and_docvqa_metrics() -> None:
    assert metrics.exact_match(" MAY 5,  1990", ["may 5, 1990"]) == 1.0
    assert metrics.exact_match("May 5", ["may 5, 1990"]) == 0.0
    result = metrics.docvqa_metrics(["May 5, 1990", "ab"], [["may 5, 1990"], ["ac"]])
    assert result == pytest.approx({"anls": 0.75, "exact_match": 0.5, "n": 2})
    metric = metrics.ANLSMetric()
    metric.update(["May 5, 1990"], [["may 5, 1990"]])
    metric.update(["ab"], [["ac"]])
    assert metric.compute() == result
    with pytest.raises(ValueError, match="at least one gold answer"):
        metrics.anls("x", [])


# --- memory --------------------------------------------------------------------------------------------
def test_kv_cache_bytes_reproduces_the_seeds_244_5_mib() -> None:
    assert kv_cache_bytes(576 - 87, layers=32, kv_width=4096, bytes_per_element=2) == 244.5 * 2**20
    with pytest.raises(ValueError, match="layers must be positive, got 0"):
        kv_cache_bytes(1, 0, 4096, 2)


# --- CIDEr (optional extra) ----------------------------------------------------------------------------
@pytest.mark.slow
def test_cider_rewards_matching_captions() -> None:
    pytest.importorskip("pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("the PTB tokenizer needs java")
    refs = {"1": ["a dog runs on the grass", "a brown dog on grass"], "2": ["a red car on a street", "red car"]}
    good = metrics.cider({"1": "a dog runs on the grass", "2": "a red car on the street"}, refs)
    bad = metrics.cider({"1": "a red car", "2": "a dog on grass"}, refs)
    assert good["n"] == 2 and good["cider"] > bad["cider"] >= 0.0 and math.isfinite(good["cider"])
    with pytest.raises(ValueError, match="missing"):
        metrics.cider({"1": "x"}, refs)
