"""Runs share a machine: idle OpenMP threads sleep in every entry point (unless the user chose otherwise), and a
process runs as many threads as the cores it may use (affinity, cgroup quota), no more.

libgomp says what it read as it loads (OMP_DISPLAY_ENV=VERBOSE): GOMP_SPINCOUNT is 0 under OMP_WAIT_POLICY=PASSIVE,
300000 with no policy and 30000000000 under ACTIVE, so these tests see the policy in effect, not only set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import process
from harness.data import store
from tests.conftest import CPU_ENV, RUN, check
from tests.test_run import tiny_recipe, write

SPIN_COUNTS = {"PASSIVE": "GOMP_SPINCOUNT = '0'", "ACTIVE": "GOMP_SPINCOUNT = '30000000000'"}


def openmp_as_loaded(command: list[str], policy: str | None = None) -> str:
    """What libgomp printed of its settings as `command` loaded it, with OMP_WAIT_POLICY=`policy` (None: unset)."""
    env = {key: value for key, value in CPU_ENV.items() if key != "OMP_WAIT_POLICY"}
    env.update(OMP_DISPLAY_ENV="VERBOSE", **({} if policy is None else {"OMP_WAIT_POLICY": policy}))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    check(done)
    return done.stderr


# Each module an entry point starts from: harness run / python -m harness.run / accelerate launch harness/run.py
# (run.py's top), harness evaluate, and a submitted job (which loads harness.submit to unpickle its RunJob).
@pytest.mark.parametrize("module", ["harness.run", "harness.evaluate", "harness.submit"])
def test_every_entry_point_sleeps_idle_openmp_threads(module: str) -> None:
    assert SPIN_COUNTS["PASSIVE"] in openmp_as_loaded([sys.executable, "-c", f"import {module}; import torch"])


def test_a_wait_policy_the_user_chose_is_kept() -> None:
    shown = openmp_as_loaded([sys.executable, "-c", "import harness.run; import torch"], policy="ACTIVE")
    assert SPIN_COUNTS["ACTIVE"] in shown


@pytest.mark.slow
def test_a_run_launched_as_a_script_sleeps_idle_openmp_threads(tmp_path: Path) -> None:
    # What `accelerate launch harness/run.py` starts on each rank: run.py as a script, end to end.
    recipe = write(tmp_path, tiny_recipe(tmp_path, optim={"iterations": 1}))
    assert SPIN_COUNTS["PASSIVE"] in openmp_as_loaded([sys.executable, RUN, str(recipe), "--no-report"])


def threads_on(cpus: set[int] | None, local_processes: int = 1) -> tuple[int, int]:
    """(usable cores, torch's threads after use_the_cores) in a fresh process on `cpus` (None: all it may use)."""
    pin = "" if cpus is None else f"os.sched_setaffinity(0, {cpus!r}); "
    code = (f"import os; {pin}from harness.process import usable_cores, use_the_cores; use_the_cores(True); "
            "import torch; print(usable_cores(), torch.get_num_threads())")
    env = {**CPU_ENV, "LOCAL_WORLD_SIZE": str(local_processes)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    check(done)
    cores, threads = done.stdout.split()
    return int(cores), int(threads)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_the_threads_follow_a_restricted_affinity() -> None:
    assert threads_on({min(os.sched_getaffinity(0))}) == (1, 1)  # as under `taskset -c 0`


@pytest.mark.parametrize(("usable", "physical", "local_processes", "threads"), [
    (4, 4, 2, 2), (4, 4, 8, 1), (4, 2, 1, 2), (1, 4, 1, 1),
])
def test_local_processes_share_the_usable_physical_cores(monkeypatch: pytest.MonkeyPatch, usable: int, physical: int,
                                                          local_processes: int, threads: int) -> None:
    monkeypatch.setattr(process, "usable_cores", lambda: usable)
    monkeypatch.setattr(process.psutil, "cpu_count", lambda logical=True: physical)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_processes))
    assert process.cpu_threads() == threads


@pytest.mark.parametrize(("cpu_max", "cores"), [
    ("50000 100000", 1),  # half a core: still one
    ("150000 100000", 2),  # a part of a core counts
    ("max 100000", None),  # no quota: the affinity alone
])
def test_a_cgroup_cpu_quota_caps_the_usable_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  cpu_max: str, cores: int | None) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    monkeypatch.setattr(process, "CGROUP_V2_CPU_MAX", tmp_path / "cpu.max")
    affinity = len(os.sched_getaffinity(0))
    assert process.usable_cores() == (affinity if cores is None else min(affinity, cores))


def test_a_cgroup_v1_quota_is_read_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    monkeypatch.setattr(process, "CGROUP_V2_CPU_MAX", tmp_path / "absent")
    monkeypatch.setattr(process, "CGROUP_V1_CPU", tmp_path)
    assert process.cgroup_cpu_quota() == 0.5 and process.usable_cores() == 1


def test_the_usable_cores_have_one_home() -> None:
    assert store.usable_cores is process.usable_cores  # the data loaders' and the prepared store's count too
