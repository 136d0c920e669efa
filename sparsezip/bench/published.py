"""Published results in the benchmark matrix: how they decide a case, and the session's POPE aggregates.

Two checks run side by side and say which is which:

- the user's own stored expectations (``fixtures/expected/<model>.json``, :mod:`sparsezip.bench.expectations`):
  a *regression* against a previous run of the same setup;
- the papers' numbers (``fixtures/expected/published/``, :mod:`sparsezip.eval.reproduction`), only for a
  checkpoint recognised by its weights: a miss of a ``check: fail`` entry (the method's own paper, or LLaVA's
  own table) fails the case as *does not reproduce the published result*, naming the source; a miss of a
  ``report`` entry is a warning.

POPE's published values are means over the three ``pope-*`` cases, so they are checked at the end of the session
by :class:`PublishedSession` (a pytest plugin the matrix's conftest registers): each case hands its payload over
as a ``user_properties`` item (also across xdist workers), and the session's terminal summary lists every
published entry checked; a missed ``fail`` entry there makes the session fail. With only some splits selected
(``-k pope-random``) the summary says the mean could not be checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sparsezip.bench.expectations import Verdict
from sparsezip.eval.reproduction import Result, aggregate, summary_lines

PUBLISHED_PROPERTY = "sparsezip_published"  # the user_properties name a case's payload travels under
AGAINST_PAPER = "a check against the paper's number, not against your stored expectations"


@dataclass(frozen=True)
class Outcome:
    """What the matrix case does: ``action`` ``pass``, ``fail`` or ``xfail`` with ``message``; ``warnings`` to
    emit either way (report-only misses, quality improved beyond the own tolerance)."""

    action: str
    message: str
    warnings: tuple[str, ...] = ()


def decide(own: Verdict | None, payload: Mapping | None) -> Outcome:
    """Combine the own-expectation verdict (``None`` under ``--update-expected``) with the case's published
    results (``payload`` = :func:`sparsezip.eval.reproduction.case_payload`; ``None`` for an embedded model,
    which no paper measured: then the own verdict alone decides, as without published results).

    Order: a missed ``fail`` entry fails (its message first, a regression appended); then a regression fails;
    a case without its own expectation passes when a ``fail`` entry reproduced (it was checked, against the
    paper), else it stays an xfail naming both reasons; a report-only miss and an improvement are warnings.
    """
    if payload is None:
        return _own_only(own)
    results = [Result.from_json(r) for r in payload.get("results", ())]
    failed = [r for r in results if r.failed]
    warned = [r.message for r in results if r.status == "does_not_reproduce" and not r.failed]
    if own is not None and own.status == "improved":
        warned.append(own.message)
    if failed:
        message = "published result not reproduced: " + "; ".join(r.message for r in failed) + f" ({AGAINST_PAPER})"
        if own is not None and own.status == "regressed":
            message += f"; and {own.message}"
        return Outcome("fail", message, tuple(warned))
    if own is not None and own.status == "regressed":
        return Outcome("fail", own.message, tuple(warned))
    published = _published_note(payload, results)
    if own is None:
        return Outcome("pass", published, tuple(warned))
    if own.status == "unchecked":
        reproduced = [r for r in results if r.status == "reproduces" and r.check == "fail"]
        if reproduced:
            return Outcome("pass", f"{published} ({own.message})", tuple(warned))
        return Outcome("xfail", f"{own.message}; published: {published}", tuple(warned))
    return Outcome("pass", f"{own.message}; published: {published}", tuple(warned))


def _own_only(own: Verdict | None) -> Outcome:
    if own is None:
        return Outcome("pass", "expectation recorded")
    action = {"regressed": "fail", "unchecked": "xfail"}.get(own.status, "pass")
    return Outcome(action, own.message, (own.message,) if own.status == "improved" else ())


def _published_note(payload: Mapping, results: Sequence[Result]) -> str:
    """One short line on the case's published side (for messages next to the own verdict)."""
    checkpoint = payload.get("checkpoint") or {}
    if checkpoint.get("status") != "recognised":  # the details are in the session summary and a warning
        return checkpoint.get("message", "not checked").split(" (", 1)[0]
    if not results:
        return f"no published value for this case ({checkpoint.get('hf_repo')})"
    return "; ".join(r.message for r in results)


class PublishedSession:
    """Pytest plugin: collects the cases' payloads, checks the POPE aggregates when the session ends, lists
    every checked entry in the terminal summary, and fails the session on a missed ``fail`` aggregate."""

    def __init__(self) -> None:
        self.payloads: list[Mapping] = []
        self.lines: list[str] = []

    def pytest_runtest_logreport(self, report) -> None:
        if report.when != "call":
            return
        self.payloads.extend(value for name, value in getattr(report, "user_properties", ())
                             if name == PUBLISHED_PROPERTY)

    def failed_aggregates(self) -> list[Result]:
        """The POPE aggregates of ``check: fail`` entries that were compared and missed."""
        return [r for r in aggregate(self.payloads) if r.failed]

    def pytest_sessionfinish(self, session) -> None:
        import pytest

        if hasattr(session.config, "workerinput"):  # an xdist worker: the controller sums up
            return
        self.lines = summary_lines(self.payloads)
        if self.failed_aggregates() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.lines:
            return
        terminalreporter.section("published expectations")
        for line in self.lines:
            terminalreporter.line(line, red=line.startswith("FAILED"), yellow=line.startswith("checkpoint not"))
        if self.failed_aggregates():
            terminalreporter.line(f"FAILED: {len(self.failed_aggregates())} published POPE mean(s) not reproduced "
                                  f"({AGAINST_PAPER}); the session fails", red=True, bold=True)
