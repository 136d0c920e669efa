"""The field's published results for real checkpoints, as data: ``fixtures/expected/published/<checkpoint>.json``.

One file per checkpoint (``llava-1.5-7b-hf``, ``llava-v1.6-vicuna-7b-hf``, ``Qwen2.5-VL-7B-Instruct``) holds the
values the papers print for matrix cases, each with its metric and scale, exact source (paper, table, row, column),
label-file version, a tolerance with its reasons, and ``check``: ``fail`` (the method's own paper, or LLaVA's own
table: a miss fails the case) or ``report`` (a third-party number or another protocol: a miss is only reported).
Where papers disagree, the others are kept under ``also_reported``. ``fixtures/expected/published/README.md``
describes the schema; :mod:`sparsezip.eval.reproduction` compares runs with the entries.

Which file applies is decided by the **content identity of the weights**, never by the folder name:
``checkpoint.identity`` is :func:`~sparsezip.adapters.checkpoint.identity_from_hashes` of the weight files' sha256
the Hugging Face Hub lists (``checkpoint.weight_files_sha256``), i.e. what
:func:`~sparsezip.adapters.checkpoint.checkpoint_identity` returns for a folder holding exactly those files. A
re-sharded or re-uploaded copy, another conversion or fine-tuned weights have another identity and are "not
recognised": their cases say so instead of being compared with numbers measured on other weights.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sparsezip.adapters.checkpoint import identity_from_hashes

PUBLISHED_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "expected" / "published"
PUBLISHED_DIR_ENV = "SPARSEZIP_PUBLISHED_DIR"  # another folder of published files (tests, private checkpoints)
SCHEMA_VERSION = 1
CHECKS = ("fail", "report")
POPE_SPLITS = ("random", "popular", "adversarial")
# compare.kind -> the dataset family it applies to. POPE values are aggregates over the three split cases (no
# paper prints a per-split F1): the mean of the split F1s (LLaVA's convention) or one F1 pooled over all
# questions (lmms-eval's); everything else is one case's metric.
COMPARE_KINDS: dict[str, str | None] = {"mean_of_cases": "pope", "pooled_over_cases": "pope", "case_metric": None}
# compare.metric -> the family whose case metrics it reads.
METRICS: dict[str, str] = {"f1": "pope", "perception + cognition": "mme", "perception": "mme", "anls": "docvqa"}
_KEY = re.compile(r"^(?P<family>[a-z_]+)\[(?P<model>[^\]]+)\]-(?P<row>[a-z0-9_-]+?)(?:-k(?P<budget>\d+))?"
                  r"(?::(?P<part>perception))?$")


@dataclass(frozen=True)
class LabelSplit:
    """The label file one POPE split was measured on: its ``file`` name and ``sha256`` (where known) and ``n``."""

    n: int
    file: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class PublishedEntry:
    """One published value, keyed like the matrix cases it compares with.

    Attributes:
        key: ``pope[llava-1.5-7b-hf]-visionzip-k64`` (the POPE aggregate over the three ``pope-*`` cases),
            ``mme[...]-none`` (perception + cognition of that case), ``mme[...]-none:perception``, ``docvqa[...]``.
        family: the dataset family (``pope``, ``mme``, ``docvqa``); ``row`` the matrix row; ``budget`` the case
            id's token count on this model (``None`` for ``none``).
        kind: ``mean_of_cases`` / ``pooled_over_cases`` (POPE) or ``case_metric``; ``metric`` what is read.
        value: the published value in the suite's units (F1 / ANLS as fractions, MME in points).
        display: factor from suite units to the published scale (100 for percent); ``printed`` the value as
            printed in the source.
        tolerance: two-sided, in suite units (reasons in the file).
        check: ``fail`` or ``report``.
        source: the source's short name, table, row and column (for messages).
        splits: POPE only: the label file of each split the value was measured on.
        label_version: the label set's version as the file states it.
        matrix_note: why no matrix case has this key (a budget the matrix does not run), else ``None``.
    """

    key: str
    family: str
    row: str
    budget: int | None
    kind: str
    metric: str
    value: float
    display: float
    printed: str
    tolerance: float
    check: str
    source: str
    splits: Mapping[str, LabelSplit] | None = field(default=None, repr=False)
    label_version: str | None = field(default=None, repr=False)
    matrix_note: str | None = None

    def describe(self) -> str:
        """What is compared, in words (``POPE F1, mean of the 3 splits``)."""
        if self.kind == "mean_of_cases":
            return "POPE F1, mean of the 3 splits"
        if self.kind == "pooled_over_cases":
            return "POPE F1 pooled over the 3 splits"
        return {"perception + cognition": "MME perception + cognition", "perception": "MME perception",
                "anls": "DocVQA ANLS"}[self.metric]


@dataclass(frozen=True)
class PublishedFile:
    """One checkpoint's file: ``model`` (its name in keys), ``hf_repo``, the weight files' sha256 and the
    ``identity`` derived from them (``None`` when the hashes are not known: then nothing is recognised as it)."""

    path: Path
    model: str
    hf_repo: str
    weight_hashes: Mapping[str, str] | None
    identity: str | None
    entries: tuple[PublishedEntry, ...]

    def entries_for(self, family: str, row: str, budget: int | None) -> list[PublishedEntry]:
        """The entries a case of dataset ``family``, ``row`` and ``budget`` contributes to."""
        return [e for e in self.entries if (e.family, e.row, e.budget) == (family, row, budget)]


def _need(where: str, obj: Mapping, key: str, kind: type | tuple[type, ...]) -> object:
    value = obj.get(key) if isinstance(obj, Mapping) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{where}: '{key}' must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _splits(where: str, label_set: Mapping | None, family: str) -> tuple[dict[str, LabelSplit] | None, str | None]:
    if family != "pope":
        return None, None
    if not isinstance(label_set, Mapping) or not isinstance(label_set.get("splits"), Mapping):
        raise ValueError(f"{where}: a POPE entry needs label_set.splits (file, sha256, n per split)")
    raw = label_set["splits"]
    if sorted(raw) != sorted(POPE_SPLITS):
        raise ValueError(f"{where}: label_set.splits must name {', '.join(POPE_SPLITS)}, got {sorted(raw)}")
    splits = {name: LabelSplit(int(_need(f"{where} split {name}", s, "n", int)), s.get("file"), s.get("sha256"))
              for name, s in raw.items()}
    return splits, label_set.get("version")


def _entry(where: str, raw: Mapping, model: str, sources: Mapping) -> PublishedEntry:
    key = str(_need(where, raw, "key", str))
    match = _KEY.match(key)
    if match is None or match["model"] != model:
        raise ValueError(f"{where}: key {key!r} is not '<dataset>[{model}]-<row>[-k<budget>][:perception]'")
    compare = _need(where, raw, "compare", Mapping)
    kind, metric = compare.get("kind"), compare.get("metric")
    family = str(_need(where, raw, "dataset", str))
    if kind not in COMPARE_KINDS or COMPARE_KINDS[kind] not in (None, family):
        raise ValueError(f"{where}: compare.kind {kind!r} is not one of {list(COMPARE_KINDS)} for {family}")
    if METRICS.get(metric) != family:
        raise ValueError(f"{where}: compare.metric {metric!r} does not apply to {family} ({METRICS})")
    budget = raw.get("budget")
    expected_key = (f"{family}[{model}]-{raw.get('row')}" + ("" if budget is None else f"-k{budget}")
                    + (":perception" if metric == "perception" else ""))
    if key != expected_key:
        raise ValueError(f"{where}: key {key!r} disagrees with its dataset/row/budget/metric ({expected_key!r})")
    published = _need(where, raw, "published", Mapping)
    source_id = published.get("source")
    if source_id not in sources:
        raise ValueError(f"{where}: published.source {source_id!r} is not in the file's sources")
    value = float(_need(where, published, "value_suite_units", (int, float)))
    printed = _need(where, published, "value", (int, float))
    display = 100.0 if published.get("scale") == "percent" else 1.0
    if abs(value * display - printed) > 1e-6 * max(1.0, abs(printed)):
        raise ValueError(f"{where}: value {printed} and value_suite_units {value} disagree (scale "
                         f"{published.get('scale')!r})")
    tolerance = float(_need(where, _need(where, raw, "tolerance", Mapping), "abs", (int, float)))
    if tolerance <= 0:
        raise ValueError(f"{where}: tolerance.abs must be positive, got {tolerance}")
    check = raw.get("check")
    if check not in CHECKS:
        raise ValueError(f"{where}: check must be one of {CHECKS}, got {check!r}")
    splits, version = _splits(where, raw.get("label_set"), family)
    source = f"{sources[source_id].get('name', source_id)}, {published.get('where', '?')}"
    return PublishedEntry(key=key, family=family, row=str(raw["row"]), budget=budget, kind=kind, metric=metric,
                          value=value, display=display, printed=str(printed), tolerance=tolerance, check=check,
                          source=source, splits=splits, label_version=version, matrix_note=raw.get("matrix"))


def load_published_file(path: str | Path) -> PublishedFile:
    """Read and validate one published file. Raises ``ValueError`` naming the file and the entry for a bad
    schema, an entry whose key disagrees with its fields, an unknown source, or a recorded ``identity`` that is
    not :func:`~sparsezip.adapters.checkpoint.identity_from_hashes` of the recorded weight hashes."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(data, Mapping) or data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version must be {SCHEMA_VERSION}")
    model = str(_need(str(path), data, "model", str))
    checkpoint = _need(str(path), data, "checkpoint", Mapping)
    hashes = checkpoint.get("weight_files_sha256")
    identity = checkpoint.get("identity")
    if hashes:
        derived = identity_from_hashes(hashes)
        if identity != derived:
            raise ValueError(f"{path}: checkpoint.identity {identity!r} is not identity_from_hashes("
                             f"weight_files_sha256) = {derived}")
    elif identity is not None:
        raise ValueError(f"{path}: checkpoint.identity without weight_files_sha256 cannot be checked")
    sources = _need(str(path), data, "sources", Mapping)
    raw_entries = _need(str(path), data, "expectations", Mapping)
    entries = []
    for key, raw in raw_entries.items():
        entry = _entry(f"{path} [{key}]", raw, model, sources)
        if entry.key != key:
            raise ValueError(f"{path}: entry under {key!r} has key {entry.key!r}")
        entries.append(entry)
    return PublishedFile(path=path, model=model, hf_repo=str(checkpoint.get("hf_repo", model)),
                         weight_hashes=dict(hashes) if hashes else None, identity=identity, entries=tuple(entries))


def load_published(directory: str | Path = PUBLISHED_DIR) -> list[PublishedFile]:
    """Every ``*.json`` in ``directory`` (sorted), validated; none when the folder does not exist. Two files
    with the same identity are a ``ValueError``."""
    directory = Path(directory)
    files = [load_published_file(p) for p in sorted(directory.glob("*.json"))] if directory.is_dir() else []
    seen: dict[str, Path] = {}
    for f in files:
        if f.identity is not None and f.identity in seen:
            raise ValueError(f"{f.path} and {seen[f.identity]} claim the same checkpoint identity {f.identity}")
        if f.identity is not None:
            seen[f.identity] = f.path
    return files


@dataclass(frozen=True)
class Recognition:
    """Whether a checkpoint is one the published files describe.

    Attributes:
        status: ``recognised``, ``not_recognised``, or ``embedded`` (a model of this project: no papers).
        message: one line for people (``checkpoint not recognised: published expectations not checked (...)``).
        identity: the checkpoint's weights identity (``None`` for an embedded model).
        file: the matching published file (``recognised`` only).
        weight_hashes: the checkpoint's weight files and sha256, for the user to compare with the Hub's.
    """

    status: str
    message: str
    identity: str | None = None
    file: PublishedFile | None = None
    weight_hashes: Mapping[str, str] | None = None

    def as_json(self) -> dict:
        """What a case records about the checkpoint (``extra_info["published"]["checkpoint"]``)."""
        return {"status": self.status, "message": self.message, "identity": self.identity,
                "hf_repo": self.file.hf_repo if self.file else None,
                "file": self.file.path.name if self.file else None}


NOT_RECOGNISED = "checkpoint not recognised: published expectations not checked"


def recognise_identity(identity: str, name: str, files: Iterable[PublishedFile],
                       weight_hashes: Mapping[str, str] | None = None) -> Recognition:
    """Match a checkpoint's weights ``identity`` against ``files``; ``name`` (its name in case ids) only makes
    the message of a near miss specific (a folder called like a published checkpoint whose weights differ)."""
    files = list(files)
    for f in files:
        if f.identity is not None and f.identity == identity:
            return Recognition("recognised", f"checkpoint recognised as {f.hf_repo} (weights identity "
                               f"{identity[:12]}): published expectations of {f.path.name} are checked",
                               identity, f, weight_hashes)
    named = [f for f in files if name.lower() in (f.model.lower(), f.hf_repo.split("/")[-1].lower())]
    if named and named[0].identity is None:
        f = named[0]
        why = (f"{f.path.name} records no weight-file sha256 for {f.hf_repo} yet, so no checkpoint is recognised "
               f"as it; if these are the Hub's files, add their sha256 ({_files(weight_hashes)})")
    elif named:
        f = named[0]
        why = (f"weights identity {identity[:12]} is not {f.hf_repo}'s {f.identity[:12]}: its weight files "
               f"{', '.join(sorted(f.weight_hashes or ()))} were re-sharded, re-uploaded, converted differently "
               f"or changed (here: {_files(weight_hashes)})")
    else:
        known = ", ".join(f.hf_repo for f in files if f.identity) or "none"
        why = f"no published file has weights identity {identity[:12]}; files with known weights: {known}"
    return Recognition("not_recognised", f"{NOT_RECOGNISED} ({why})", identity, None, weight_hashes)


def _files(weight_hashes: Mapping[str, str] | None) -> str:
    if not weight_hashes:
        return "weight files unknown"
    return ", ".join(f"{name} {sha[:12]}" for name, sha in sorted(weight_hashes.items()))


def published_dir() -> Path:
    """The folder of published files: ``$SPARSEZIP_PUBLISHED_DIR``, else :data:`PUBLISHED_DIR`."""
    return Path(os.environ.get(PUBLISHED_DIR_ENV) or PUBLISHED_DIR)


def recognise(model_path: str | Path, name: str, *, embedded: bool = False,
              directory: str | Path | None = None) -> Recognition:
    """:func:`recognise_identity` for the checkpoint folder ``model_path`` (its weights hashed once, cached)
    against the files in ``directory`` (default :func:`published_dir`); an ``embedded`` model (this project's
    tiny checkpoints) is never compared with papers."""
    from sparsezip.adapters.checkpoint import weight_hashes

    if embedded:
        return Recognition("embedded", f"{name} is an embedded model of this project: no published results")
    hashes = weight_hashes(model_path)
    files = load_published(published_dir() if directory is None else directory)
    return recognise_identity(identity_from_hashes(hashes), name, files, hashes)
