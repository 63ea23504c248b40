"""switchyard's conformance kit: a pytest plugin that checks accelerator, strategy and precision
plugins against the contract, on the hardware at hand, and writes a report a vendor can publish.

Run it with ``pytest -p switchyard.testing --switchyard-accelerator NAME [--switchyard-strategy
NAME --switchyard-devices N] [--switchyard-report report.json]``, or ``switchyard conformance
...``. docs/conformance.md describes every check and the report.

This module is the plugin pytest loads; it only re-exports the hooks of
:mod:`switchyard.testing.plugin`. The checks are in :mod:`switchyard.testing.suite`, the
processes of the strategy checks run :mod:`switchyard.testing.worker`.
"""

from switchyard.testing.config import KitConfig, KitUsageError
from switchyard.testing.plugin import (
    pytest_addoption,
    pytest_collect_file,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_ignore_collect,
    switchyard_kit,
)
from switchyard.testing.report import ConformanceReport

__all__ = [
    "ConformanceReport",
    "KitConfig",
    "KitUsageError",
    "pytest_addoption",
    "pytest_collect_file",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_ignore_collect",
    "switchyard_kit",
]
