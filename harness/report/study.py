"""One study read once: its sweep record, its manifest, every run's summary, the tidy tables built from them, what is
missing and what could not be read. The report, `harness plan` and notebooks (`harness.load_study`) start here.

    >>> from harness import load_study
    >>> study = load_study("results/digit_scenes_headline")
    >>> study.runs[["variant", "seed", "miou"]]           # one row per run (pandas)
    >>> study.aggregate[["variant", "delta_mean", "verdict"]]  # one row per variant
    >>> study.sweep.design, study.manifest, study.missing, study.unreadable
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import pandas as pd

from harness.report.decisions import look_readings
from harness.report.tables import aggregate_frame, curves_frame, results_frame, split_of, study_summaries
from harness.results import (
    DamagedFile,
    StudyManifest,
    SweepRecord,
    expected_runs,
    missing_runs,
    read_study,
    read_sweep,
)

Read = TypeVar("Read")


@dataclass
class Study:
    """A study's results as tables, with what they lack."""

    results_dir: Path
    sweep: SweepRecord
    manifest: StudyManifest | None
    summaries: list[dict[str, Any]]  # every run's summary as a mapping, run_folder added
    runs: pd.DataFrame  # one row per run (results.csv)
    aggregate: pd.DataFrame  # one row per variant (aggregate.csv)
    readings: pd.DataFrame  # a sequential study's repeated CI of each variant at every look it reached
    curves: pd.DataFrame  # tidy training curves (curves.csv)
    expected: int  # runs the study expects
    missing: list[str]  # labels of expected runs without a finished, readable summary
    damaged: list[DamagedFile] = field(default_factory=list)  # study files and logs read around, not through

    @property
    def name(self) -> str:
        """The recipe's name: its results folder's."""
        return self.results_dir.resolve().name  # resolved, so that "." or a trailing slash still names it

    @property
    def split(self) -> str:
        """The split its finished runs were scored on."""
        return split_of(self.runs)

    @property
    def unreadable(self) -> list[str]:
        """Each run whose summary could not be read, as '<folder>: <what is wrong>'."""
        rows = self.runs[self.runs["status"] == "unreadable"]
        return list(rows["error"])

    @property
    def complete(self) -> bool:
        """Whether every expected run finished and every file read."""
        return not self.missing and not self.damaged

    @property
    def unfinished(self) -> str:
        """'' for a study whose every run is in, else 'k of n runs'."""
        return unfinished_text(self.expected, self.missing)

    def progress(self) -> str:
        """'' for a complete study, else 'k of n runs finished'."""
        return f"{self.unfinished} finished" if self.missing else ""

    def lacking(self) -> list[str]:
        """What a report of the study lacks, a line each: runs not finished, runs and files that could not be read."""
        lines = [f"{self.progress()}; missing: {', '.join(self.missing)}"] if self.missing else []
        return lines + [f"unreadable: {problem}" for problem in [*self.unreadable, *map(str, self.damaged)]]


def unfinished_text(expected: int, missing: list[str]) -> str:
    """'k of n runs' while runs are missing, else ''."""
    return f"{expected - len(missing)} of {expected} runs" if missing else ""


def readable(read: Callable[[Path], Read], results_dir: Path, damaged: list[DamagedFile], default: Read) -> Read:
    """`read(results_dir)`, or `default` with the damage recorded: a study goes on without a damaged file."""
    try:
        return read(results_dir)
    except DamagedFile as damage:
        damaged.append(damage)
        return default


def load_study(results_dir: str | Path) -> Study:
    """Read a results/<recipe>/ folder into a Study; damaged files are left out and listed, never fatal."""
    results_dir, damaged = Path(results_dir), []
    sweep = readable(read_sweep, results_dir, damaged, SweepRecord())
    manifest = readable(read_study, results_dir, damaged, None)
    summaries = study_summaries(results_dir)
    expected, missing = len(expected_runs(results_dir, manifest)), missing_runs(results_dir, manifest)
    runs = results_frame(summaries, sweep.baseline)
    aggregate = aggregate_frame(runs, sweep, unfinished_text(expected, missing))
    curves, damaged_logs = curves_frame(results_dir, runs)
    return Study(results_dir, sweep, manifest, summaries, runs, aggregate, look_readings(runs, aggregate, sweep),
                 curves, expected, missing, damaged + damaged_logs)
