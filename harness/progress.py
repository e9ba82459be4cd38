"""Progress: a bar where a person watches (stderr is a terminal), plain lines in a log file (a scheduler job, a
pipe). One mechanism for every long loop of the harness, so that no bar ever runs into a job log's lines."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def on_terminal() -> bool:
    """Whether a person watches this process's progress (stderr is a terminal)."""
    return sys.stderr.isatty()


def bar(iterable: Iterable[Any] | None = None, *, desc: str, enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar on a terminal; a silent one anywhere else (the caller prints plain lines where a log needs them).
    `enabled`: False off the main process."""
    return tqdm(iterable, desc=desc, disable=not (enabled and on_terminal()), **options)


def quiet_libraries() -> None:
    """Off a terminal, the bars of the libraries we call (datasets' 'Saving the dataset') stay out of the log too."""
    if not on_terminal():
        import datasets

        datasets.disable_progress_bars()
