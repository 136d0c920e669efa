"""Metrics exactly as the reference tools compute them: POPE (official ``evaluate.py`` / LLaVA ``eval_pope.py``,
or lmms-eval's parser), MME (official ``eval_tool/calculation.py``), DocVQA ANLS (the RRC evaluation script)
and exact match, COCO CIDEr (pycocoevalcap, optional).

Functional first (plain functions of predictions and labels), with thin accumulating classes on top
(torchmetrics style). Everything here is counting over strings: no tensors.

Deliberate, documented differences from the reference scripts: where they would divide by zero (POPE
precision with no "yes" predictions, F1 with p = r = 0) these return 0.0, as lmms-eval and sklearn's
``zero_division=0`` do, instead of crashing; and ``yes_ratio`` is always the share of *predictions* parsed as
yes (lmms-eval's ``pope_yes_ratio`` reports the share of yes *labels*, a constant of the label file).

The parsers here are the tools' own, applied to the text they are given. Scoring a run or a predictions file
first strips each answer (:func:`sparsezip.data.records.answer_text`), as LLaVA's and lmms-eval's pipelines
strip the model output before these parsers see it. ``fixtures/golden/metrics`` holds the reference tools'
outputs on edge cases, which ``tests/test_metrics_golden.py`` checks these functions against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import fmean

from rapidfuzz.distance import Levenshtein

POPE_PARSERS = ("official", "lmms-eval")
MME_PARSERS = ("official", "lmms-eval")
MME_PERCEPTION = (
    "existence", "count", "position", "color", "posters",
    "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_SUBTASKS = MME_PERCEPTION + MME_COGNITION
ANLS_THRESHOLD = 0.5


# ----------------------------------------------------------------------------------------------- POPE
def parse_pope_answer(text: str, parser: str = "official") -> str:
    """Map a raw generated answer to ``"yes"``, ``"no"`` or (lmms-eval parser only) ``"other"``.

    ``official`` (POPE ``evaluate.py`` == LLaVA ``eval_pope.py``): keep the text before the first ``.``,
    drop commas, split on single spaces; any word equal to ``No``, ``no`` or ``not`` means no, anything else
    (garbage included) means yes. Case- and whitespace-sensitive exactly like the original (``"No\n"`` is a
    yes: hence scoring strips first, see the module docstring).
    ``lmms-eval``: lowercase + strip; only an exact ``yes``/``no`` counts, everything else is ``other``.
    """
    if parser == "official":
        if text.find(".") != -1:
            text = text.split(".")[0]
        words = text.replace(",", "").split(" ")
        return "no" if ("No" in words or "not" in words or "no" in words) else "yes"
    if parser == "lmms-eval":
        text = text.lower().strip()
        return text if text in ("yes", "no") else "other"
    raise ValueError(f"unknown POPE parser {parser!r}; choose one of {POPE_PARSERS}")


def pope_metrics(predictions: Sequence[str], labels: Sequence[str], parser: str = "official") -> dict:
    """POPE metrics for raw ``predictions`` against ``labels`` (``yes``/``no``), positive class = yes.

    Returns ``{accuracy, precision, recall, f1, yes_ratio, n}`` (fractions in [0, 1]). With the lmms-eval
    parser an ``other`` answer is wrong for accuracy and counts as neither a positive nor a negative
    prediction for precision/recall, as lmms-eval's aggregators do.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    if not labels:
        raise ValueError("POPE metrics need at least one prediction, got 0")
    bad = [lab for lab in labels if lab not in ("yes", "no")]
    if bad:
        raise ValueError(f"POPE labels must be 'yes' or 'no', got {bad[0]!r}")
    parsed = [parse_pope_answer(p, parser) for p in predictions]
    pairs = list(zip(parsed, labels, strict=True))
    tp = pairs.count(("yes", "yes"))
    fp = pairs.count(("yes", "no"))
    tn = pairs.count(("no", "no"))
    fn = pairs.count(("no", "yes"))
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "accuracy": (tp + tn) / len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": parsed.count("yes") / len(pairs),
        "n": len(pairs),
    }


def pope_report(by_category: Mapping[str, tuple[Sequence[str], Sequence[str]]], parser: str = "official") -> dict:
    """POPE over one or several categories: ``{category: (predictions, labels)}``.

    One category: the flat ``pope_metrics`` dict. Several: ``{"categories": {name: metrics}, "mean_f1",
    "pooled"}``, where ``mean_f1`` (the mean of the per-category F1s) is the number the LLaVA paper reports
    (85.9 for LLaVA-1.5-7B) and ``pooled`` scores all questions as one set.
    """
    if not by_category:
        raise ValueError("POPE report needs at least one category, got none")
    categories = {name: pope_metrics(p, lab, parser) for name, (p, lab) in by_category.items()}
    if len(categories) == 1:
        return next(iter(categories.values()))
    all_preds = [p for preds, _ in by_category.values() for p in preds]
    all_labels = [lab for _, labels in by_category.values() for lab in labels]
    return {
        "categories": categories,
        "mean_f1": fmean(m["f1"] for m in categories.values()),
        "pooled": pope_metrics(all_preds, all_labels, parser),
    }


class PopeMetric:
    """Accumulating POPE metric: ``update(predictions, labels, category)`` per batch, ``compute()`` at the end."""

    def __init__(self, parser: str = "official") -> None:
        parse_pope_answer("", parser)  # validate the parser name now, not at compute time
        self.parser = parser
        self._data: dict[str, tuple[list[str], list[str]]] = {}

    def update(self, predictions: Sequence[str], labels: Sequence[str], category: str = "") -> None:
        """Add raw ``predictions`` and their ``labels`` for ``category``."""
        if len(predictions) != len(labels):
            raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
        preds, labs = self._data.setdefault(category, ([], []))
        preds.extend(predictions)
        labs.extend(labels)

    def compute(self) -> dict:
        """The :func:`pope_report` of everything added so far."""
        return pope_report(self._data, self.parser)


# ------------------------------------------------------------------------------------------------ MME
def parse_mme_answer(text: str, parser: str = "official") -> str:
    """Map a raw answer to ``"yes"``, ``"no"`` or ``"other"`` (always wrong).

    ``official`` (MME ``calculation.py``): lowercase; exactly ``yes``/``no`` decides, else the first four
    characters: containing ``yes`` -> yes, containing ``no`` -> no, else other. No stripping, like the
    original (which reads the answer with its line's newline attached; that never changes the outcome).
    ``lmms-eval``: lowercase, strip, drop ``.``; also maps a lone ``y``/``n``; then the same prefix rule.
    """
    if parser not in MME_PARSERS:
        raise ValueError(f"unknown MME parser {parser!r}; choose one of {MME_PARSERS}")
    text = text.lower()
    if parser == "lmms-eval":
        text = text.strip().replace(".", "")
        if len(text) == 1:
            return {"y": "yes", "n": "no"}.get(text, "other")
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_metrics(
    items: Sequence[tuple[str, str, str, str]], parser: str = "official"
) -> dict:
    """MME scores from ``(subtask, image, prediction, label)`` items (label ``yes``/``no``, any case).

    Per subtask, in percent as the official tool prints: ``acc`` = questions right, ``acc_plus`` = images
    with every question right (MME has exactly two per image), ``score = acc + acc_plus`` (max 200).
    ``perception`` / ``cognition`` = sum of the scores of the perception / cognition subtasks *present*
    (max 2000 / 800 with all 14), ``None`` when none of that group is present; ``subtasks`` lists which
    subtasks were scored.
    """
    if not items:
        raise ValueError("MME metrics need at least one prediction, got 0")
    per_image: dict[str, dict[str, list[bool]]] = {}
    for subtask, image, prediction, label in items:
        if subtask not in MME_SUBTASKS:
            raise ValueError(f"unknown MME subtask {subtask!r}; expected one of {MME_SUBTASKS}")
        gold = label.lower()
        if gold not in ("yes", "no"):
            raise ValueError(f"MME labels must be yes/no, got {label!r} for {subtask}/{image}")
        per_image.setdefault(subtask, {}).setdefault(image, []).append(parse_mme_answer(prediction, parser) == gold)
    subtasks = {}
    for name in MME_SUBTASKS:
        if name not in per_image:
            continue
        images = per_image[name].values()
        acc = 100.0 * sum(sum(r) for r in images) / sum(len(r) for r in images)
        acc_plus = 100.0 * sum(all(r) for r in images) / len(images)
        subtasks[name] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}

    def group_sum(names: tuple[str, ...]) -> float | None:
        present = [subtasks[n]["score"] for n in names if n in subtasks]
        return sum(present) if present else None

    return {"subtasks": subtasks, "perception": group_sum(MME_PERCEPTION), "cognition": group_sum(MME_COGNITION)}


class MMEMetric:
    """Accumulating MME metric: ``update(subtasks, images, predictions, labels)``, ``compute()``."""

    def __init__(self, parser: str = "official") -> None:
        parse_mme_answer("", parser)
        self.parser = parser
        self._items: list[tuple[str, str, str, str]] = []

    def update(
        self, subtasks: Sequence[str], images: Sequence[str], predictions: Sequence[str], labels: Sequence[str]
    ) -> None:
        """Add one entry per question (all four sequences have the same length)."""
        lengths = {len(subtasks), len(images), len(predictions), len(labels)}
        if len(lengths) != 1:
            raise ValueError(f"MMEMetric.update needs equal lengths, got {sorted(lengths)}")
        self._items.extend(zip(subtasks, images, predictions, labels, strict=True))

    def compute(self) -> dict:
        """The :func:`mme_metrics` of everything added so far."""
        return mme_metrics(self._items, self.parser)


# ------------------------------------------------------------------------------------------ ANLS / EM
def _normalise(text: str) -> str:
    """The RRC normalisation: trim, lowercase, collapse whitespace runs to one space."""
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: Sequence[str], threshold: float = ANLS_THRESHOLD) -> float:
    """Per-question ANLS exactly as the RRC DocVQA script: Levenshtein distance between the normalised
    strings, divided by the length of the longer *raw* string (``len(s.upper())``, as the script does);
    score = 1 - the smallest such distance over ``answers``; a score below ``threshold`` becomes 0
    (exactly ``threshold`` is kept). Two empty strings score 1.
    """
    if not answers:
        raise ValueError("ANLS needs at least one gold answer, got none")
    pred = _normalise(prediction)
    distances = []
    for answer in answers:
        length = max(len(answer.upper()), len(prediction.upper()))
        dist = Levenshtein.distance(_normalise(answer), pred)
        distances.append(0.0 if length == 0 else dist / length)
    score = 1.0 - min(distances)
    return 0.0 if score < threshold else score


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    if not answers:
        raise ValueError("exact match needs at least one gold answer, got none")
    pred = _normalise(prediction)
    return float(any(_normalise(a) == pred for a in answers))


def docvqa_metrics(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict:
    """``{anls, exact_match, n}``: means over questions of :func:`anls` and :func:`exact_match`."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    if not predictions:
        raise ValueError("DocVQA metrics need at least one prediction, got 0")
    return {
        "anls": fmean(anls(p, a) for p, a in zip(predictions, answers, strict=True)),
        "exact_match": fmean(exact_match(p, a) for p, a in zip(predictions, answers, strict=True)),
        "n": len(predictions),
    }


class ANLSMetric:
    """Accumulating DocVQA metric: ``update(predictions, answers)``, ``compute()`` -> :func:`docvqa_metrics`."""

    def __init__(self) -> None:
        self._predictions: list[str] = []
        self._answers: list[Sequence[str]] = []

    def update(self, predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> None:
        """Add raw ``predictions`` and, for each, its list of gold answers."""
        if len(predictions) != len(answers):
            raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists")
        self._predictions.extend(predictions)
        self._answers.extend(answers)

    def compute(self) -> dict:
        return docvqa_metrics(self._predictions, self._answers)


# --------------------------------------------------------------------------------------------- CIDEr
def cider(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict:
    """Corpus CIDEr-D as the COCO caption evaluation computes it (pycocoevalcap: PTB tokenizer, which
    needs Java, then ``Cider``). Never SPICE (it downloads models). Needs the ``captions`` extra.

    Returns ``{"cider": score, "n": images}``.
    """
    if set(predictions) != set(references):
        missing = sorted(set(references) - set(predictions))[:5]
        extra = sorted(set(predictions) - set(references))[:5]
        raise ValueError(f"CIDEr needs one prediction per image: missing {missing}, unknown {extra}")
    if not predictions:
        raise ValueError("CIDEr needs at least one prediction, got 0")
    try:
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError:
        raise ValueError("CIDEr needs pycocoevalcap: pip install 'sparsezip[captions]'") from None
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in refs] for k, refs in references.items()})
    res = tokenizer.tokenize({k: [{"caption": predictions[k]}] for k in references})
    score, _ = Cider().compute_score(gts, res)
    return {"cider": float(score), "n": len(predictions)}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0
