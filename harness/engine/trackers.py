"""Experiment trackers (run.trackers) through Accelerate's `log_with`: checked before a sweep starts, per run
started and finished.

Trackers that log to a server are checked up front: without their offline mode set and the
server reachable, the sweep stops with one line naming run.trackers instead of hanging in
the tracker's retries.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType

from harness.recipe import Recipe, RecipeError, Variant

# Tracker -> (its server, the environment setting that makes it log locally instead, if it has one).
NETWORK_TRACKERS: dict[str, tuple[str, str | None]] = {
    "wandb": ("api.wandb.ai", "WANDB_MODE=offline"),
    "swanlab": ("api.swanlab.cn", "SWANLAB_MODE=offline"),
    "comet_ml": ("www.comet.com", None),
}
CONNECT_SECONDS = 3.0


def reachable(host: str) -> bool:
    """Whether a TCP connection to host:443 opens within CONNECT_SECONDS."""
    try:
        socket.create_connection((host, 443), timeout=CONNECT_SECONDS).close()
        return True
    except OSError:
        return False


def check_trackers(names: tuple[str, ...]) -> None:
    """Raise RecipeError (run.trackers) for a tracker Accelerate does not know, is not installed, or cannot reach."""
    available = {str(tracker) for tracker in get_available_trackers()}
    for name in names:
        if name not in LoggerType.list() or name == "all":
            valid = ", ".join(sorted(set(LoggerType.list()) - {"all"}))
            raise RecipeError("run.trackers", f"Accelerate has no tracker {name!r}; it supports {valid}")
        if name not in available:
            raise RecipeError("run.trackers", f"{name} is not installed: pip install {name}")
        if name in NETWORK_TRACKERS:
            host, offline = NETWORK_TRACKERS[name]
            if offline is not None and os.environ.get(offline.split("=")[0], "").lower() == offline.split("=")[1]:
                continue
            if not reachable(host):
                local = f"set {offline} to log locally, or drop {name}" if offline else f"drop {name} or use tensorboard"
                raise RecipeError("run.trackers", f"{name} logs to {host}, which this machine cannot reach; {local}")

def flat_config(recipe: Recipe) -> dict[str, bool | int | float | str]:
    """The recipe as dotted keys and scalar values, as trackers store hyperparameters."""
    def walk(prefix: str, node: Any) -> dict[str, Any]:
        if isinstance(node, dict):
            return {key: value for name, child in node.items() for key, value in walk(f"{prefix}{name}.", child).items()}
        return {prefix[:-1]: node if isinstance(node, (bool, int, float, str)) else str(node)}

    return walk("", recipe.model_dump(mode="json"))


def start_trackers(accelerator: Accelerator, variant: Variant) -> None:
    """Open the recipe's trackers for this run (a no-op without any), with the recipe as its configuration."""
    if variant.recipe.run.trackers:
        accelerator.init_trackers(variant.name, config=flat_config(variant.recipe))


def finish_trackers(accelerator: Accelerator) -> None:
    """Flush and close this run's trackers.

    Not accelerator.end_training(): it also destroys the process group, which the sweep's next
    variants and its final barrier still need.
    """
    for tracker in accelerator.trackers:
        tracker.finish()


def tracked(record: dict[str, Any]) -> dict[str, float | int]:
    """A metrics record's numbers as tracker values, tagged by kind: train/loss, eval/val_miou, ..."""
    return {f"{record['kind']}/{key}": value for key, value in record.items()
            if key not in ("kind", "iter") and isinstance(value, (int, float))}
