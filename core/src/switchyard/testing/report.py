"""The conformance report: every check's outcome, with the versions and hardware it ran on, as
JSON a vendor can publish.

Outcomes are taken from pytest's own test reports, phase by phase: a check is ``passed`` only
if its test body ran and every phase passed; a skip (absent hardware, a missing optional
requirement) is ``skipped`` with its reason; a failure or an error in any phase is ``failed``
with its message; a check that was collected but never reported (an interrupted session) is
``not run``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from switchyard.testing.config import FAMILIES, KitConfig, entry_record

FORMAT_VERSION = 1
"""Bumped when a field of the report changes meaning or disappears."""

MARKER = "switchyard_conformance"

_MESSAGE_LIMIT = 4000


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class CheckRecord:
    """One check: a parametrized test of the kit."""

    id: str
    nodeid: str
    family: str
    description: str
    outcome: str = "not run"
    duration: float = 0.0
    message: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "family": self.family,
            "outcome": self.outcome,
            "duration": round(self.duration, 4),
            "message": self.message,
            "description": self.description,
            "details": self.details,
            "nodeid": self.nodeid,
        }


def check_id(item: pytest.Item) -> tuple[str, str] | None:
    """``("strategy", "strategy.all_reduce[sum]")`` for a kit test; ``None`` for any other."""
    marker = item.get_closest_marker(MARKER)
    if marker is None or not marker.args:
        return None
    family = str(marker.args[0])
    name = getattr(item, "originalname", item.name).removeprefix("test_")
    callspec = getattr(item, "callspec", None)
    suffix = f"[{callspec.id}]" if callspec is not None else ""
    return family, f"{family}.{name}{suffix}"


def _message(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, "Skipped: reason")
        text = str(longrepr[2]).removeprefix("Skipped: ")
    else:
        crash = getattr(longrepr, "reprcrash", None)
        text = crash.message if crash is not None else str(longrepr)
    if report.when != "call" and report.failed:
        text = f"error in {report.when}: {text}"
    if len(text) > _MESSAGE_LIMIT:
        text = text[:_MESSAGE_LIMIT] + " [...]"
    return text


class ConformanceReport:
    """A pytest plugin object that follows the kit's checks and writes the report.

    Attributes:
        kit: the session's selection (what is checked, on which hardware).
        path: where the JSON report is written at the end of the session, or ``None``.
        invocation: the session's pytest arguments, recorded in the report.
        checks: the record of each check so far, by pytest node id.
        started: when the session started (UTC).
    """

    def __init__(self, kit: KitConfig, path: Path | None, invocation: list[str]) -> None:
        self.kit = kit
        self.path = path
        self.invocation = invocation
        self.checks: dict[str, CheckRecord] = {}
        self.started = datetime.datetime.now(datetime.timezone.utc)

    # -- pytest hooks ---------------------------------------------------------------------

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            found = check_id(item)
            if found is None:
                continue
            family, identifier = found
            doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
            self.checks[item.nodeid] = CheckRecord(
                identifier, item.nodeid, family, " ".join(doc.split("\n\n")[0].split())
            )

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = self.checks.get(report.nodeid)
        if record is None:
            return
        record.duration += report.duration
        for key, value in report.user_properties:
            record.details[key] = value
        if report.failed:
            if record.outcome != "failed":
                record.outcome, record.message = "failed", _message(report)
        elif report.skipped:
            if record.outcome != "failed":
                record.outcome, record.message = "skipped", _message(report)
        elif report.when == "call" and record.outcome == "not run":
            record.outcome = "passed"

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.as_dict(), indent=2, default=str)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.write_text(text + "\n", encoding="utf-8")
        os.replace(temporary, self.path)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        summary = self.summary()
        where = f"; report: {self.path}" if self.path is not None else ""
        terminalreporter.write_sep(
            "-",
            f"switchyard conformance: {summary['result']} ({summary['passed']} passed, "
            f"{summary['failed']} failed, {summary['skipped']} skipped){where}",
        )

    # -- the report -----------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The counts of passed, failed, skipped and not-run checks and the result: ``failed``
        if any check failed, ``incomplete`` if any was skipped or not run (or none passed), else
        ``passed``."""
        outcomes = [c.outcome for c in self.checks.values()]
        counts = {o: outcomes.count(o) for o in ("passed", "failed", "skipped", "not run")}
        if counts["failed"]:
            result = "failed"
        elif counts["skipped"] or counts["not run"] or not counts["passed"]:
            result = "incomplete"
        else:
            result = "passed"
        return {"result": result, "total": len(outcomes), **counts}

    def as_dict(self) -> dict[str, Any]:
        """The whole report as written to :attr:`path`: the format version, the summary, the
        versions, the platform, what was selected and every check."""
        kit = self.kit
        order = {family: index for index, family in enumerate(FAMILIES)}
        checks = sorted(self.checks.values(), key=lambda c: order.get(c.family, len(order)))
        return {
            "format": FORMAT_VERSION,
            "kind": "switchyard-conformance-report",
            "created": self.started.isoformat(timespec="seconds"),
            "summary": self.summary(),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "switchyard": _version("switchyard"),
                "pluggy": _version("pluggy"),
                "pytest": pytest.__version__,
            },
            "platform": {
                "system": platform.platform(),
                "machine": platform.machine(),
                "python_executable": sys.executable,
            },
            "selected": {
                "accelerator": entry_record(kit.accelerator),
                "strategy": entry_record(kit.strategy),
                "strategy_processes": kit.devices if kit.strategy is not None else None,
                "strategy_precision": kit.strategy_precision if kit.strategy else None,
                "precisions": [case.record() for case in kit.considered_precisions],
                "hardware_accelerator": entry_record(kit.hardware),
            },
            "plugins": [
                {
                    "name": p.name,
                    "source": p.source,
                    "distribution": p.distribution,
                    "version": p.version,
                }
                for p in kit.plugins_under_test()
            ],
            "devices": kit.device_record(),
            "invocation": self.invocation,
            "checks": [c.as_dict() for c in checks],
        }
