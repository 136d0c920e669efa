"""Does a run reproduce the published numbers? Per-case results, the POPE aggregates, and their messages.

A benchmark case of a recognised checkpoint (:mod:`sparsezip.eval.published`) is compared with every published
entry of its dataset, row and budget:

- MME and DocVQA entries are one case's metric (MME perception + cognition needs all 14 subtasks, perception
  all 10 perception subtasks: the published totals are over the whole benchmark);
- POPE entries are aggregates over the three ``pope-*`` cases (the papers print only the mean of the split F1s,
  or lmms-eval's F1 pooled over all questions), so a POPE case only contributes its *part* (its F1 and answer
  counts) and :func:`aggregate` checks the entry once all three parts are there; with fewer it says it could not.

Comparable means measured as the paper measured: the whole dataset (no ``--limit``) and, for POPE, the label file
of each split the paper used (sha256 when the paper's set is a file, else the question count). A case that is not
comparable says why instead of a verdict. Verdicts are two-sided (a result far above the paper signals another
protocol too): ``reproduces`` within the entry's tolerance, else ``does_not_reproduce``; only a miss of a
``check: fail`` entry fails (:attr:`Result.failed`).

Everything here is plain JSON-able data, so the matrix's cases (also on xdist workers), the session summary and
``sparsezip report`` share it: a case records ``extra_info["published"]`` = :func:`case_payload`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from sparsezip.eval.published import POPE_SPLITS, PublishedEntry, Recognition
from sparsezip.metrics import MME_PERCEPTION, MME_SUBTASKS

STATUSES = ("reproduces", "does_not_reproduce", "not_comparable", "incomplete", "pending")


@dataclass(frozen=True)
class Result:
    """The outcome for one published entry: ``status`` (one of :data:`STATUSES`), ``message`` (one line),
    ``measured`` / ``published`` / ``tolerance`` in suite units (``measured`` ``None`` unless compared),
    ``display`` the factor to the published scale (100 for percent)."""

    key: str
    status: str
    check: str
    message: str
    published: float
    tolerance: float
    source: str
    measured: float | None = None
    display: float = 1.0

    @property
    def failed(self) -> bool:
        """A ``check: fail`` entry that was compared and missed."""
        return self.status == "does_not_reproduce" and self.check == "fail"

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> Result:
        return cls(**{k: data[k] for k in ("key", "status", "check", "message", "published", "tolerance", "source")},
                   measured=data.get("measured"), display=float(data.get("display", 1.0)))


def _fmt(display: float, value: float) -> str:
    return f"{value * display:.2f}" if display != 1.0 else f"{value:.1f}"


def _entry_json(entry: PublishedEntry) -> dict:
    return {"key": entry.key, "kind": entry.kind, "metric": entry.metric, "value": entry.value,
            "display": entry.display, "printed": entry.printed, "tolerance": entry.tolerance, "check": entry.check,
            "source": entry.source, "description": entry.describe()}


def _base(entry: Mapping) -> dict:
    return dict(key=entry["key"], check=entry["check"], published=entry["value"], tolerance=entry["tolerance"],
                source=entry["source"], display=float(entry["display"]))


def compare(entry: Mapping, measured: float) -> Result:
    """Compare ``measured`` (suite units) with a published entry (:func:`_entry_json` form): ``reproduces
    (source): got X, published Y +- t`` or ``does not reproduce: got X, published Y +- t (source)``, values on
    the published scale, ``[report only]`` appended for a ``check: report`` entry."""
    display = float(entry["display"])
    numbers = (f"got {_fmt(display, measured)}, published {entry['printed']} +- {_fmt(display, entry['tolerance'])} "
               f"[{entry['description']}]")
    tag = "" if entry["check"] == "fail" else " [report only]"
    if abs(measured - entry["value"]) <= entry["tolerance"] + 1e-12:
        return Result(status="reproduces", measured=measured,
                      message=f"{entry['key']}: reproduces ({entry['source']}): {numbers}{tag}", **_base(entry))
    return Result(status="does_not_reproduce", measured=measured,
                  message=f"{entry['key']}: does not reproduce: {numbers} ({entry['source']}){tag}", **_base(entry))


def _unchecked(entry: Mapping, status: str, why: str) -> Result:
    return Result(status=status, message=f"{entry['key']}: {why}", **_base(entry))


def _mme_value(entry: PublishedEntry, metrics: Mapping) -> tuple[float | None, str | None]:
    present = set(metrics.get("subtasks") or {})
    needed = MME_SUBTASKS if entry.metric == "perception + cognition" else MME_PERCEPTION
    missing = [s for s in needed if s not in present]
    if missing:
        return None, (f"not comparable: the published {entry.describe()} is over all {len(needed)} subtasks, this "
                      f"run has {len(needed) - len(missing)} (missing {', '.join(missing)})")
    if entry.metric == "perception":
        return float(metrics["perception"]), None
    return float(metrics["perception"]) + float(metrics["cognition"]), None


def pope_counts(metrics: Mapping) -> dict[str, int]:
    """``tp / fp / tn / fn`` of one POPE case from its metrics (``n``, ``yes_ratio``, ``precision``,
    ``accuracy``: exact up to float rounding), for the pooled F1 over splits."""
    n = int(metrics["n"])
    yes = round(float(metrics["yes_ratio"]) * n)
    tp = round(float(metrics["precision"]) * yes) if yes else 0
    tn = round(float(metrics["accuracy"]) * n) - tp
    return {"tp": tp, "fp": yes - tp, "tn": tn, "fn": n - yes - tn}


def _pope_label_problem(entry: PublishedEntry, split: str, n: int, dataset_sha256: str | None) -> str | None:
    expected = entry.splits[split]
    if expected.sha256 is not None and dataset_sha256 != expected.sha256:
        return (f"pope-{split} labels differ from the set the paper used ({entry.label_version}): sha256 "
                f"{dataset_sha256} instead of {expected.sha256} ({expected.file})")
    if n != expected.n:
        return f"pope-{split} has {n} questions, the paper's set {expected.n} ({entry.label_version})"
    return None


def case_results(entries: Iterable[PublishedEntry], *, dataset: str, metrics: Mapping, n: int,
                 dataset_sha256: str | None, limit: int | None) -> tuple[list[Result], dict | None]:
    """``(results, pope_part)`` of one case (``dataset`` a benchmark name such as ``pope-random``) against the
    published ``entries`` of its row and budget. POPE entries give a ``pending`` result each and the case's
    ``pope_part`` (split, F1, counts, and per entry whether the split is comparable) for :func:`aggregate`."""
    family, _, split = dataset.partition("-")
    results: list[Result] = []
    part: dict | None = None
    if family == "pope":
        part = {"split": split, "f1": float(metrics["f1"]), "counts": pope_counts(metrics), "entries": {}}
    for entry in entries:
        data = _entry_json(entry)
        problem = f"not comparable: --limit {limit} evaluates a subset, the paper the whole set" if limit else None
        if family == "pope":
            problem = problem or _pope_label_problem(entry, split, n, dataset_sha256)
            part["entries"][entry.key] = {**data, "problem": problem}
            results.append(_unchecked(data, "not_comparable" if problem else "pending", problem or (
                f"part of the published {entry.describe()} (checked once pope-{', pope-'.join(POPE_SPLITS)} "
                "have run)")))
            continue
        if problem is None and family == "mme":
            value, problem = _mme_value(entry, metrics)
        elif problem is None:
            value = float(metrics[entry.metric])
        results.append(_unchecked(data, "not_comparable", problem) if problem else compare(data, value))
    return results, part


def case_payload(recognition: Recognition, *, case: str, dataset: str, row: str, budget: int | None,
                 metrics: Mapping, n: int, dataset_sha256: str | None, limit: int | None) -> dict:
    """``extra_info["published"]`` of one case: the checkpoint's recognition, the case's results and (POPE) its
    part of the aggregates. An unrecognised checkpoint gets no results, only the message saying so."""
    payload: dict = {"case": case, "dataset": dataset, "row": row, "budget": budget,
                     "checkpoint": recognition.as_json(), "results": [], "pope_part": None}
    if recognition.file is None:
        return payload
    family = dataset.partition("-")[0]
    entries = recognition.file.entries_for(family, row, budget)
    results, part = case_results(entries, dataset=dataset, metrics=metrics, n=n, dataset_sha256=dataset_sha256,
                                 limit=limit)
    payload["results"] = [r.as_json() for r in results]
    payload["pope_part"] = part if entries else None
    return payload


def _aggregate_one(entry: Mapping, parts: Mapping[str, Mapping]) -> Result:
    missing = [f"pope-{s}" for s in POPE_SPLITS if s not in parts]
    if missing:
        ran = ", ".join(f"pope-{s}" for s in POPE_SPLITS if s in parts)
        return _unchecked(entry, "incomplete", f"could not check the published {entry['description']}: only "
                                               f"{ran} ran (missing {', '.join(missing)})")
    problems = [p["entries"][entry["key"]]["problem"] for p in parts.values() if p["entries"][entry["key"]]["problem"]]
    if problems:
        return _unchecked(entry, "not_comparable", "; ".join(problems))
    if entry["kind"] == "mean_of_cases":
        measured = sum(parts[s]["f1"] for s in POPE_SPLITS) / len(POPE_SPLITS)
    else:
        tp, fp, fn = (sum(parts[s]["counts"][k] for s in POPE_SPLITS) for k in ("tp", "fp", "fn"))
        measured = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return compare(entry, measured)


def aggregate(payloads: Iterable[Mapping]) -> list[Result]:
    """The POPE aggregates of a set of case payloads (one session, or one run of a report), in first-seen order:
    each entry checked when its three split cases are there, else ``incomplete`` naming the missing splits.
    Payloads of different checkpoints are kept apart (by weights identity)."""
    groups: dict[tuple, tuple[Mapping, dict[str, Mapping]]] = {}
    for payload in payloads:
        part = payload.get("pope_part")
        if not part:
            continue
        for key, entry in part["entries"].items():
            group = groups.setdefault((payload["checkpoint"].get("identity"), key), (entry, {}))
            group[1][part["split"]] = part
    return [_aggregate_one(entry, parts) for entry, parts in groups.values()]


def all_results(payloads: Sequence[Mapping]) -> list[Result]:
    """Every decided result of ``payloads``: the per-case ones that are not POPE parts, then the aggregates."""
    per_case = [Result.from_json(r) for p in payloads for r in p.get("results", ()) if r["status"] != "pending"
                and not (p.get("pope_part") and r["key"] in p["pope_part"]["entries"])]
    return per_case + aggregate(payloads)


def summary_lines(payloads: Sequence[Mapping]) -> list[str]:
    """Lines for the end of a session: the checkpoint's recognition, then one line per published entry checked
    (failures of ``check: fail`` entries first, marked ``FAILED``), and the counts."""
    if not payloads:
        return []
    checkpoint = payloads[0]["checkpoint"]
    lines = [checkpoint["message"]]
    if checkpoint["status"] != "recognised":
        return lines
    results = all_results(payloads)
    order = {"does_not_reproduce": 0, "not_comparable": 1, "incomplete": 2, "reproduces": 3}
    for result in sorted(results, key=lambda r: (not r.failed, order.get(r.status, 4))):
        lines.append(("FAILED " if result.failed else "") + result.message)
    counts = {s: sum(r.status == s for r in results) for s in order}
    lines.append(f"{counts['reproduces']} reproduce, {counts['does_not_reproduce']} do not "
                 f"({sum(r.failed for r in results)} of them check: fail entries, i.e. failures), "
                 f"{counts['not_comparable']} not comparable, {counts['incomplete']} incomplete POPE means")
    return lines


_VERDICT_WORDS = {"reproduces": "reproduces", "does_not_reproduce": "**does not reproduce**"}


def published_markdown(runs: Iterable[tuple[str, Mapping]]) -> str:
    """The report's "Published results" sections from ``(run label, case payload)`` pairs: per run, the
    checkpoint's recognition and a table of every published entry its cases touched (POPE means aggregated
    over the run's three splits); ``""`` when no payload is given."""
    grouped: dict[str, list[Mapping]] = {}
    for run, payload in runs:
        grouped.setdefault(run, []).append(payload)
    sections = []
    for run, payloads in grouped.items():
        checkpoint = payloads[0]["checkpoint"]
        lines = [f"### Published results [{run}]", "", checkpoint["message"]]
        results = all_results(payloads) if checkpoint["status"] == "recognised" else []
        if results:
            lines += ["", "| Published entry | Got | Published | Tolerance | Verdict | Check | Source |",
                      "|---|---|---|---|---|---|---|"]
            for r in results:
                got = "-" if r.measured is None else _fmt(r.display, r.measured)
                why = r.message.split(": ", 1)[1] if r.status not in _VERDICT_WORDS else ""
                verdict = _VERDICT_WORDS.get(r.status, why)
                lines.append(f"| {r.key} | {got} | {_fmt(r.display, r.published)} | {_fmt(r.display, r.tolerance)} "
                             f"| {verdict} | {r.check} | {r.source} |")
        sections.append("\n".join(lines))
    if not sections:
        return ""
    footer = ("Published values come from `fixtures/expected/published/` (matched by the checkpoint's weights "
              "identity). POPE values are the mean (or pooled) F1 over the run's three POPE splits; tolerances are "
              "two-sided. `fail`: the method's own paper (or LLaVA's table), a miss fails the benchmark; `report`: "
              "another paper's number or protocol, shown for orientation.")
    return "\n\n".join(sections) + "\n\n" + footer + "\n"
