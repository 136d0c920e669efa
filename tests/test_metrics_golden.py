"""``sparsezip.metrics`` against the reference tools' own outputs (``fixtures/golden/metrics``, provenance in its
SOURCE.md): POPE's ``evaluate.py`` / LLaVA's ``eval_pope.py``, MME's ``calculation.py``, the RRC DocVQA script and
lmms-eval's POPE/MME/ANLS code, each run once outside the project on fixed edge-case tables.

Also here: scoring a record strips its answer first (``records.answer_text``), checked on the same tables,
so "No\\n" is a no as LLaVA's pipeline scores it, while the parser itself stays the official one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsezip import metrics
from sparsezip.data.records import score_records

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "golden" / "metrics"
POPE = json.loads((GOLDEN / "pope.json").read_text(encoding="utf-8"))
MME = json.loads((GOLDEN / "mme.json").read_text(encoding="utf-8"))
DOCVQA = json.loads((GOLDEN / "docvqa.json").read_text(encoding="utf-8"))
METRIC_KEYS = ("accuracy", "precision", "recall", "f1")


def _lmms_label(prediction: str) -> str:
    """lmms-eval keeps its processed prediction string; only an exact yes/no is a positive/negative."""
    return prediction if prediction in ("yes", "no") else "other"


# --- POPE ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", POPE["parse"], ids=lambda r: repr(r["text"]))
def test_pope_parsers_match_the_reference_tools(row: dict) -> None:
    assert metrics.parse_pope_answer(row["text"]) == row["official"]
    assert metrics.parse_pope_answer(row["text"].strip()) == row["official_on_stripped"]
    assert metrics.parse_pope_answer(row["text"], "lmms-eval") == _lmms_label(row["lmms_eval_prediction"])


def test_pope_golden_covers_answers_that_only_stripping_fixes() -> None:
    fixed = [r["text"] for r in POPE["parse"] if r["official"] != r["official_on_stripped"]]
    assert {"No\n", "\nNo", "\tNo"} <= set(fixed)


@pytest.mark.parametrize("table", POPE["tables"], ids=lambda t: t["name"])
def test_pope_metrics_match_the_reference_tools(table: dict) -> None:
    texts = [t for t, _ in table["rows"]]
    labels = [label for _, label in table["rows"]]
    for expected, preds in ((table["official"], texts), (table["official_on_stripped"], [t.strip() for t in texts])):
        got = metrics.pope_metrics(preds, labels)
        if "error" in expected:  # the official script divides by zero (no yes prediction); we define 0
            assert expected == {"error": "ZeroDivisionError"}
            assert (got["precision"], got["f1"]) == (0.0, 0.0)
            assert got["accuracy"] == pytest.approx(sum(p == "no" for p in labels) / len(labels))
        else:
            assert {k: got[k] for k in (*METRIC_KEYS, "yes_ratio")} == pytest.approx(expected)
    lmms = metrics.pope_metrics(texts, labels, parser="lmms-eval")
    assert {k: lmms[k] for k in METRIC_KEYS} == pytest.approx({k: table["lmms_eval"][k] for k in METRIC_KEYS})
    parsed = [_lmms_label(t.lower().strip()) for t in texts]
    assert lmms["yes_ratio"] == pytest.approx(parsed.count("yes") / len(parsed))  # ours: share of predictions


@pytest.mark.parametrize("table", [t for t in POPE["tables"] if "error" not in t["official_on_stripped"]],
                         ids=lambda t: t["name"])
def test_scoring_pope_records_strips_like_llava(table: dict) -> None:
    records = [{"question_id": i, "category": "random", "answers": [label], "prediction": text}
               for i, (text, label) in enumerate(table["rows"])]
    got = score_records("pope", records)
    assert {k: got[k] for k in (*METRIC_KEYS, "yes_ratio")} == pytest.approx(table["official_on_stripped"])
    assert records[0]["prediction"] == table["rows"][0][0]  # the stored raw text is untouched


def test_whitespace_answers_were_yes_unstripped() -> None:
    table = next(t for t in POPE["tables"] if t["name"] == "whitespace")
    assert table["official"]["yes_ratio"] > table["official_on_stripped"]["yes_ratio"]


# --- MME -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", MME["parse"], ids=lambda r: repr(r["text"]))
def test_mme_parsers_match_the_reference_tools(row: dict) -> None:
    assert metrics.parse_mme_answer(row["text"]) == row["official"]
    if row["official_file_line"] is not None:  # the calculator reads the answer with its line's newline
        assert metrics.parse_mme_answer(row["text"]) == row["official_file_line"]
    assert metrics.parse_mme_answer(row["text"].strip()) == row["official_on_stripped"]
    assert metrics.parse_mme_answer(row["text"], "lmms-eval") == row["lmms_eval"]


def _mme_items() -> list[tuple[str, str, str, str]]:
    return [(subtask, f"{subtask}/{image}", prediction, gt) for subtask, image, _, gt, prediction in MME["tool_run"]["items"]]


def test_mme_scores_match_calculation_py() -> None:
    official = MME["tool_run"]["official"]
    result = metrics.mme_metrics(_mme_items())
    assert {name: s["score"] for name, s in result["subtasks"].items()} == pytest.approx(official["subtask_scores"])
    assert list(result["subtasks"]) == list(official["subtask_scores"])  # the official order
    assert result["perception"] == pytest.approx(official["totals"]["Perception"])
    assert result["cognition"] == pytest.approx(official["totals"]["Cognition"])


def test_mme_scores_match_lmms_eval() -> None:
    result = metrics.mme_metrics(_mme_items(), parser="lmms-eval")
    totals = MME["tool_run"]["lmms_eval_totals"]
    assert (result["perception"], result["cognition"]) == pytest.approx((totals["Perception"], totals["Cognition"]))


def test_scoring_mme_records_gives_the_calculators_scores() -> None:
    records, seen = [], {}
    for subtask, image, _, gt, prediction in MME["tool_run"]["items"]:
        k = seen[(subtask, image)] = seen.get((subtask, image), -1) + 1
        records.append({"question_id": f"{subtask}/{image}#{k}", "answers": [gt], "prediction": f"{prediction}\n"})
    got = score_records("mme", records)  # a trailing newline, as a model may emit: stripped before parsing
    assert got["perception"] == pytest.approx(MME["tool_run"]["official"]["totals"]["Perception"])
    assert got["cognition"] == pytest.approx(MME["tool_run"]["official"]["totals"]["Cognition"])


# --- DocVQA --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", DOCVQA["questions"], ids=lambda r: repr(r["prediction"]))
def test_anls_matches_the_rrc_script_and_lmms_eval(row: dict) -> None:
    assert metrics.anls(row["prediction"], row["answers"]) == pytest.approx(row["rrc"])
    assert metrics.anls(row["prediction"], row["answers"]) == pytest.approx(row["lmms_eval"])
    assert metrics.anls(row["prediction"].strip(), row["answers"]) == pytest.approx(row["rrc_on_stripped"])


def test_docvqa_mean_and_records_match_the_rrc_script() -> None:
    questions = DOCVQA["questions"]
    result = metrics.docvqa_metrics([q["prediction"] for q in questions], [q["answers"] for q in questions])
    assert result["anls"] == pytest.approx(DOCVQA["rrc_overall"])
    records = [{"question_id": i, "answers": q["answers"], "prediction": q["prediction"]} for i, q in enumerate(questions)]
    assert score_records("docvqa", records)["anls"] == pytest.approx(DOCVQA["rrc_overall_on_stripped"])
