"""RegionContrast benchmarking harness."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.report.study import Study


def load_study(results_dir: str | Path) -> Study:
    """A study's results as pandas tables (runs, aggregate, curves) with its sweep record and manifest, for a
    notebook: see harness/report/study.py. Imports pandas only when called."""
    from harness.report.study import load_study as load

    return load(results_dir)
