"""Metrics against hand-computed values, the real POPE label files, and verbatim transcriptions of the
reference tools (torchmetrics style: one reference per metric, compared on random inputs)."""

from __future__ import annotations

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


# --- verbatim reference implementations ----------------------------------------------------------------
def reference_eval_pope(texts: list[str], labels: list[str]) -> dict:
    """LLaVA ``llava/eval/eval_pope.py`` (== POPE ``evaluate.py``), transcribed line by line."""
    answers = [{"text": t} for t in texts]
    for answer in answers:
        text = answer["text"]
        if text.find(".") != -1:
            text = text.split(".")[0]
        text = text.replace(",", "")
        words = text.split(" ")
        if "No" in words or "not" in words or "no" in words:
            answer["text"] = "no"
        else:
            answer["text"] = "yes"
    label_list = [0 if lab == "no" else 1 for lab in labels]
    pred_list = [0 if a["text"] == "no" else 1 for a in answers]
    pos, neg = 1, 0
    yes_ratio = pred_list.count(1) / len(pred_list)
    tp = tn = fp = fn = 0
    for pred, label in zip(pred_list, label_list, strict=True):
        if pred == pos and label == pos:
            tp += 1
        elif pred == pos and label == neg:
            fp += 1
        elif pred == neg and label == neg:
            tn += 1
        elif pred == neg and label == pos:
            fn += 1
    precision = float(tp) / float(tp + fp)
    recall = float(tp) / float(tp + fn)
    f1 = 2 * precision * recall / (precision + recall)
    acc = (tp + tn) / (tp + tn + fp + fn)
    return {"accuracy": acc, "precision": precision, "recall": recall, "f1": f1, "yes_ratio": yes_ratio}


def reference_mme_parse(pred_ans: str) -> str:
    """MME ``eval_tool/calculation.py`` ``parse_pred_ans``, transcribed."""
    if pred_ans in ["yes", "no"]:
        return pred_ans
    prefix_pred_ans = pred_ans[:4]
    if "yes" in prefix_pred_ans:
        return "yes"
    if "no" in prefix_pred_ans:
        return "no"
    return "other"


def reference_levenshtein(s1: str, s2: str) -> int:
    """The RRC / lmms-eval pure-Python Levenshtein, transcribed."""
    if len(s1) > len(s2):
        s1, s2 = s2, s1
    distances = range(len(s1) + 1)
    for i2, c2 in enumerate(s2):
        distances_ = [i2 + 1]
        for i1, c1 in enumerate(s1):
            if c1 == c2:
                distances_.append(distances[i1])
            else:
                distances_.append(1 + min((distances[i1], distances[i1 + 1], distances_[-1])))
        distances = distances_
    return distances[-1]


def reference_anls(references: list[str], prediction: str, thresh_hold: float = 0.5) -> float:
    """The RRC DocVQA script's per-question score (as copied into lmms-eval ``api/metrics.py``)."""
    values = []
    for answer in references:
        gt_answer = " ".join(answer.strip().lower().split())
        det_answer = " ".join(prediction.strip().lower().split())
        dist = reference_levenshtein(gt_answer, det_answer)
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else float(dist) / float(length))
    question_result = 1 - min(values)
    if question_result < thresh_hold:
        question_result = 0
    return question_result


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


@given(st.lists(st.tuples(answer_text, st.sampled_from(["yes", "no"])), min_size=1, max_size=30))
def test_pope_matches_the_official_script(rows: list[tuple[str, str]]) -> None:
    texts, labels = [t for t, _ in rows], [lab for _, lab in rows]
    try:
        expected = reference_eval_pope(texts, labels)
    except ZeroDivisionError:  # the official script crashes; we define 0 (see metrics docstring)
        return
    got = metrics.pope_metrics(texts, labels)
    assert {k: got[k] for k in expected} == pytest.approx(expected)


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
def test_mme_parser_matches_calculation_py(text: str) -> None:
    # calculation.py lowercases, then parses the text with its line's newline still attached
    assert metrics.parse_mme_answer(text) == reference_mme_parse((text + "\n").lower())
    assert metrics.parse_mme_answer(text) == reference_mme_parse(text.lower())


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


@given(st.text(alphabet="aAbB  c\t", max_size=8), st.lists(st.text(alphabet="aAbB  c\t", max_size=8), min_size=1, max_size=3))
def test_anls_matches_the_rrc_script(prediction: str, answers: list[str]) -> None:
    assert metrics.anls(prediction, answers) == pytest.approx(reference_anls(answers, prediction))


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
