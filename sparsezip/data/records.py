"""Records: what gets scored. A record is ``{question_id, [category], answers, prediction}``; the runner
writes them (plus timings) to ``predictions.jsonl``, and ``sparsezip score`` builds them by joining a
predictions file to the annotations. Every metric is computed from records, so both paths agree.

A record's ``prediction`` is the raw generated text, kept as generated; what the parsers and metrics see is
:func:`answer_text`, the stripped text (the one place where that is decided).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from sparsezip.data.registry import dataset_spec
from sparsezip.data.sample import Sample
from sparsezip.jsonio import iter_jsonl

# Where a predictions line keeps its raw answer: ours first, then LLaVA's answer files ("text").
PREDICTION_FIELDS = ("prediction", "text")


def answer_text(record: Mapping) -> str:
    """The text a record is scored on: its raw ``prediction`` with leading and trailing whitespace removed
    (``str.strip()``), as LLaVA's evaluation scripts and lmms-eval strip the model output before parsing.

    Without it the official POPE parser, which splits on single spaces, reads ``"No\n"`` or ``"\nNo"`` as
    *yes*; MME's reads ``" \nno"`` (first four characters) as *other*; and ANLS divides by the padded length.
    """
    return record["prediction"].strip()


def scored_records(records: Iterable[Mapping]) -> list[dict]:
    """Copies of ``records`` whose ``prediction`` is :func:`answer_text` (the stored records are untouched)."""
    return [{**record, "prediction": answer_text(record)} for record in records]


def gold_record(family: str, sample: Sample) -> dict:
    """The annotation half of a record: ``question_id``, the id scope field if the dataset has one, ``answers``."""
    record: dict = {"question_id": sample.id}
    scope = dataset_spec(family).id_scope
    if scope is not None:
        record[scope] = sample.meta.get(scope)
    record["answers"] = list(sample.answers)
    return record


def record_key(family: str, record: Mapping) -> str:
    """The join key of a record or sample: the question id as a string (so the json layout's ``123`` and
    the parquet layout's ``"123"`` match), qualified by the id scope (POPE: ``random/123``) if any."""
    scope = dataset_spec(family).id_scope
    qid = str(record["question_id"])
    return f"{record.get(scope)}/{qid}" if scope is not None else qid


def read_predictions(path: str | Path) -> list[tuple[str, dict]]:
    """``(file:line, object)`` for each line of a predictions JSON-lines file; each needs ``question_id``
    and ``prediction`` (or LLaVA's ``text``)."""
    rows = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if "question_id" not in obj:
            raise ValueError(f"{where}: prediction line lacks 'question_id'")
        qid = obj["question_id"]
        if isinstance(qid, bool) or not isinstance(qid, int | str) or (isinstance(qid, str) and not qid.strip()):
            shown = "null" if qid is None else repr(qid)
            raise ValueError(f"{where}: question_id must be a non-empty string or an integer, got {shown}")
        if not any(isinstance(obj.get(f), str) for f in PREDICTION_FIELDS):
            raise ValueError(f"{where}: prediction line lacks a string 'prediction'")
        rows.append((where, obj))
    if not rows:
        raise ValueError(f"{path}: no predictions")
    return rows


def join_predictions(
    family: str,
    samples: Iterable[Sample],
    predictions: Sequence[tuple[str, Mapping]],
    *,
    allow_missing: bool = False,
) -> list[dict]:
    """Scoring records for ``samples`` (in annotation order) with their ``predictions``.

    A prediction whose id is not in the annotations, or a duplicate prediction, is always an error naming
    its line; an annotation without a prediction is an error unless ``allow_missing`` (then it is left out
    of the score). POPE predictions may omit ``category`` when the annotations hold one category only.
    """
    spec = dataset_spec(family)
    golds = {}
    for sample in samples:
        record = gold_record(family, sample)
        key = record_key(family, record)
        if key in golds:
            raise ValueError(f"{family}: question id {sample.id!r} appears twice in the annotations ({key})")
        golds[key] = record
    scopes = {g.get(spec.id_scope) for g in golds.values()} if spec.id_scope else set()
    answered: dict[str, str] = {}
    for where, pred in predictions:
        pred = dict(pred)
        if spec.id_scope and spec.id_scope not in pred:
            if len(scopes) != 1:
                raise ValueError(f"{where}: the annotations span {len(scopes)} {spec.id_scope} values "
                                 f"{sorted(map(str, scopes))}, so each prediction needs a '{spec.id_scope}' field")
            pred[spec.id_scope] = next(iter(scopes))
        key = record_key(family, pred)
        if key not in golds:
            raise ValueError(f"{where}: question_id {pred['question_id']!r} is not in the annotations")
        if key in answered:
            raise ValueError(f"{where}: duplicate prediction for question_id {pred['question_id']!r}")
        answered[key] = next(pred[f] for f in PREDICTION_FIELDS if isinstance(pred.get(f), str))
    missing = [golds[k]["question_id"] for k in golds if k not in answered]
    if missing and not allow_missing:
        raise ValueError(f"{len(missing)} annotated question(s) have no prediction, e.g. {missing[:5]} "
                         "(pass --allow-missing to score only the answered ones)")
    return [{**gold, "prediction": answered[key]} for key, gold in golds.items() if key in answered]


def score_records(family: str, records: Sequence[Mapping], parser: str | None = None) -> dict:
    """The dataset's metrics dict for ``records`` (see ``DatasetSpec.score``), scored on their
    :func:`answer_text`."""
    spec = dataset_spec(family)
    if parser is not None and parser not in spec.parsers:
        raise ValueError(f"{family} has no parser {parser!r}; choose one of {spec.parsers}")
    if not records:
        raise ValueError(f"{family}: nothing to score (0 records)")
    return spec.score(scored_records(records), parser)


# What a scoring record needs, and what the benchmark matrix keeps of every question (``compact_records``).
SCORING_FIELDS = ("question_id", "category", "answers", "prediction")


def compact_records(records: Sequence[Mapping]) -> dict[str, list]:
    """Column-wise ``{field: [value per record]}`` of the scoring fields (absent fields are left out), small
    enough to keep every question of a benchmark case in its ``extra_info`` (for paired statistics later)."""
    return {f: [r[f] for r in records] for f in SCORING_FIELDS if records and all(f in r for r in records)}


def expand_records(columns: Mapping[str, Sequence]) -> list[dict]:
    """The inverse of :func:`compact_records`: one scoring record per question. ``ValueError`` if the columns
    disagree in length or lack ``question_id`` / ``answers`` / ``prediction``."""
    missing = [f for f in ("question_id", "answers", "prediction") if f not in columns]
    if missing:
        raise ValueError(f"per-question records lack column(s) {missing}")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"per-question record columns differ in length: {sorted(lengths)}")
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
