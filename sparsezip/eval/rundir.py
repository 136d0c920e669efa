"""A run folder: what it is a run of (``run.json``), who writes it (a lock), what it already holds (resume), and
joining shards.

``run.json`` is written when a run's first batch is done (never for a run that produced nothing); a later run
with anything different is refused, naming the field and both values, instead of mixing results. A folder whose
``run.json`` has no results next to it (a run killed before its first batch was stored) is free to be claimed
again. ``predictions.jsonl`` is append-only (a torn last line from a kill is dropped and redone).
``summary.json`` is rewritten atomically after every run.

One eval at a time per folder: :func:`locked` holds an exclusive ``flock`` on ``.sparsezip.lock`` inside it
(``filelock``) and a second process is refused at once. The operating system drops the lock when its holder
dies, so a killed run never leaves a stale lock (on file systems without ``flock`` filelock falls back to a
lock file; see its documentation).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from sparsezip.data.records import record_key
from sparsezip.eval.summary import summarize
from sparsezip.jsonio import atomic_write_json, atomic_write_jsonl, iter_jsonl, read_jsonl_resumable

RUN_FILE, PREDICTIONS_FILE, SUMMARY_FILE = "run.json", "predictions.jsonl", "summary.json"
LOCK_FILE = ".sparsezip.lock"
_ABSENT = object()
_SHOWN = 6  # differences listed in a refusal (a run.json of an older sparsezip lacks many fields at once)
_LOCKS: dict[str, FileLock] = {}  # one lock object per folder and process, so nested `locked` calls re-enter


def run_folder(out_dir: str | Path) -> Path:
    """``out_dir`` as a ``Path``; ``ValueError`` if it exists and is not a folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"run folder {out_dir} exists and is a file, not a folder; choose another --out")
    return out_dir


@contextmanager
def locked(out_dir: str | Path) -> Iterator[Path]:
    """Create ``out_dir`` if needed and hold its exclusive lock for the ``with`` block (re-entrant within one
    process). ``ValueError`` at once if another process holds it."""
    out_dir = run_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = str(out_dir.resolve())
    lock = _LOCKS.setdefault(key, FileLock(str(Path(key) / LOCK_FILE), timeout=0))
    try:
        lock.acquire()
    except Timeout:
        raise ValueError(f"{out_dir} is in use: another sparsezip eval is writing to it (it holds "
                         f"{out_dir / LOCK_FILE}); wait for it to finish or choose another --out") from None
    try:
        yield out_dir
    finally:
        lock.release()


def previous_run(out_dir: Path) -> dict | None:
    """The ``run.json`` of the run ``out_dir`` holds, or ``None`` when it holds no results yet (no ``run.json``,
    or one whose run stored nothing: it may be claimed again). Refuses results without a ``run.json``."""
    run_file, predictions = out_dir / RUN_FILE, out_dir / PREDICTIONS_FILE
    holds_results = (out_dir / SUMMARY_FILE).is_file() or _has_a_line(predictions)
    if not run_file.is_file():
        if holds_results:
            raise ValueError(f"{predictions} exists without {RUN_FILE}: refusing to append to it")
        return None
    if not holds_results:
        return None
    try:
        previous = json.loads(run_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{run_file}: not valid JSON ({err}); the folder's run is unknown") from None
    if not isinstance(previous, dict):
        raise ValueError(f"{run_file}: expected a JSON object")
    return previous


def _has_a_line(path: Path) -> bool:
    """Whether ``path`` holds at least one complete (newline-terminated) line."""
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 16):
            if b"\n" in chunk:
                return True
    return False


# run.json fields that do not decide whether a folder holds the same run: the label files (compared by content
# below) and the torch thread count (recorded; a resume may use another).
NOT_IDENTITY = ("sources", "torch_threads")


def check_same_run(out_dir: Path, previous: Mapping | None, config: Mapping, *, partial: bool = False) -> None:
    """Refuse ``config`` if ``out_dir`` holds a different run (``previous``), naming each differing field (dotted
    path) and both values. ``partial``: ``config`` holds only what is known so far (before the model loads), so
    only its own fields are compared. A label file both runs use must be byte-identical; a larger ``--limit``
    may reach further ones."""
    if previous is None:
        return
    fields = set(config) - set(NOT_IDENTITY) if partial else None
    problems = config_differences(previous, config, exclude=NOT_IDENTITY, only=fields)
    old_sources, new_sources = previous.get("sources") or {}, config.get("sources") or {}
    changed = sorted(f for f in old_sources.keys() & new_sources.keys() if old_sources[f] != new_sources[f])
    if changed:
        problems.append(f"annotation file(s) {changed} changed (sha256 differs)")
    if problems:
        shown = problems[:_SHOWN] + ([f"and {len(problems) - _SHOWN} more"] if len(problems) > _SHOWN else [])
        raise ValueError(f"{out_dir} holds a different run ({'; '.join(shown)}); resume it with the same "
                         "settings or choose another --out")


def write_run_file(out_dir: Path, config: Mapping, previous: Mapping | None) -> None:
    """Write ``run.json`` for ``config``, keeping the label files an earlier part of the same run recorded."""
    sources = {**((previous or {}).get("sources") or {}), **(config.get("sources") or {})}
    atomic_write_json(out_dir / RUN_FILE, {**config, "sources": sources})


def config_differences(
    old: Mapping, new: Mapping, *, exclude: Sequence[str] = (), only: set[str] | None = None
) -> list[str]:
    """``"field.sub: old -> new"`` for every leaf of two (nested) configs that differs, in field order; top-level
    fields in ``exclude`` are skipped, and with ``only`` just those top-level fields are compared."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    problems = []
    for key in sorted(flat_old.keys() | flat_new.keys()):
        top = key.split(".", 1)[0]
        if top in exclude or (only is not None and top not in only):
            continue
        a, b = flat_old.get(key, _ABSENT), flat_new.get(key, _ABSENT)
        if a != b:
            problems.append(f"{key}: {_show_pair(a, b)}")
    return problems


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, Mapping) and value:
        flat: dict[str, object] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def _show_pair(a: object, b: object, width: int = 72) -> str:
    """``repr(a) -> repr(b)``; two long strings are shown around their first difference."""
    show = {id(_ABSENT): "(absent)"}
    if isinstance(a, str) and isinstance(b, str) and max(len(a), len(b)) > width:
        at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        start = max(0, at - width // 3)

        def window(text: str) -> str:
            part = text[start : start + width]
            return ("..." if start else "") + repr(part) + ("..." if start + width < len(text) else "")

        return f"{window(a)} -> {window(b)}"
    return " -> ".join(show.get(id(v), repr(v)) for v in (a, b))


def load_done(path: Path, family: str, positions: Mapping[str, int]) -> dict[str, dict]:
    """Records already in ``path``, by key; refuses records that are not in this selection or repeat."""
    done: dict[str, dict] = {}
    records = read_jsonl_resumable(path)
    beyond = [r.get("index") for r in records if isinstance(r.get("index"), int) and r["index"] >= len(positions)]
    if beyond:
        raise ValueError(
            f"{path} holds {len(records)} records, up to sample {max(beyond)}, but this run selects only "
            f"{len(positions)} samples (a smaller --limit than the run that wrote them?); use --limit "
            f"{max(beyond) + 1} or more, or another --out")
    for lineno, record in enumerate(records, start=1):
        key = record_key(family, record)
        if key not in positions or record.get("index") != positions[key]:
            raise ValueError(f"{path}: record {lineno} ({key}) is not sample {record.get('index')} of this dataset")
        if key in done:
            raise ValueError(f"{path}: record {lineno} repeats question {key}")
        done[key] = record
    return done


def merge_runs(shard_dirs: Sequence[str | Path], out_dir: str | Path) -> dict:
    """Join the outputs of ``sparsezip eval --shard i/n`` runs into one run in ``out_dir``.

    Refuses shards of different runs (any ``run.json`` difference besides the shard index), a repeated or
    missing shard, an unfinished shard (no complete ``summary.json``) and duplicate questions. The merged
    ``predictions.jsonl`` is in dataset order, as an unsharded run writes it; the summary is recomputed
    from the merged records (peak memory = the largest shard's).
    """
    if not shard_dirs:
        raise ValueError("merge needs at least one shard directory")
    if Path(out_dir).resolve() in {Path(d).resolve() for d in shard_dirs}:
        raise ValueError(f"merge output {out_dir} must not be one of the shard directories")
    configs, summaries, records = [], [], []
    for shard_dir in map(Path, shard_dirs):
        for name in (RUN_FILE, SUMMARY_FILE):
            if not (shard_dir / name).is_file():
                raise ValueError(f"{shard_dir}: no {name} (not a finished sparsezip eval run)")
        config = json.loads((shard_dir / RUN_FILE).read_text(encoding="utf-8"))
        summary = json.loads((shard_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        if not config.get("shard"):
            raise ValueError(f"{shard_dir}: not a shard run (run.json has no shard)")
        if not summary.get("complete"):
            raise ValueError(f"{shard_dir}: shard did not finish ({summary.get('n')}/{summary.get('expected')} samples)")
        configs.append(config)
        summaries.append(summary)
        records.extend(obj for _, obj in iter_jsonl(shard_dir / PREDICTIONS_FILE))  # read-only: no repair
    reference = _run_identity(configs[0])
    for shard_dir, config in zip(shard_dirs, configs, strict=True):
        differences = config_differences(reference, _run_identity(config))
        if differences:
            raise ValueError(f"{shard_dir} is a shard of a different run than {shard_dirs[0]} "
                             f"({'; '.join(differences)})")
    count = configs[0]["shard"]["count"]
    indices = sorted(c["shard"]["index"] for c in configs)
    if indices != list(range(count)):
        missing = sorted(set(range(count)) - set(indices))
        raise ValueError(f"merge needs each of the {count} shards exactly once; got {indices}, missing {missing}")
    family = configs[0]["family"]
    seen: set[str] = set()
    for record in records:
        key = record_key(family, record)
        if key in seen:
            raise ValueError(f"question {key} appears in more than one shard")
        seen.add(key)
    records.sort(key=lambda r: r["index"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {**configs[0], "shard": None}
    atomic_write_json(out_dir / RUN_FILE, config)
    atomic_write_jsonl(out_dir / PREDICTIONS_FILE, records)
    environments = [s["environment"] for s in summaries]
    peak = max((s["memory"]["peak_bytes"], s["memory"]["peak_kind"]) for s in summaries)
    summary = summarize(
        config, records, expected=configs[0]["shard"]["of_samples"], peak=peak,
        environment=environments[0] if all(e == environments[0] for e in environments) else {"mixed": environments},
        kv_bytes_per_token=summaries[0]["memory"]["kv_bytes_per_token"],
    )  # fmt: skip
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def _run_identity(config: Mapping) -> dict:
    """A shard's ``run.json`` without its own index (nor its thread count): equal for all shards of one run."""
    return {**config, "shard": {**config["shard"], "index": None}, "torch_threads": None}
