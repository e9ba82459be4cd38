"""The quickstart's CE run on a machine it shares: s/iter alone and beside a busy process pinned to one core,
with the harness's defaults before and now.

- before: OMP_WAIT_POLICY=ACTIVE (idle OpenMP threads spin) and one thread per physical core, whatever
  cores the process may use (harness.process.use_the_cores until issue 27);
- now: the defaults every entry point sets (OMP_WAIT_POLICY=PASSIVE, harness.process.share_the_machine;
  a thread per usable core, harness.process.cpu_threads);
- with --unset: also no policy at all (libgomp's default: spin a while, then sleep) with the old threads,
  what `harness run` had before (only submitted jobs got PASSIVE).

Each measurement is `harness/run.py recipes/quickstart.yaml --only ce` for --iterations iterations in a
fresh process (libgomp reads its policy once, as it loads), in a temporary folder; its s/iter is the run's own
(summary.json: the steps past the warm-up, no start-up or evaluation). The settings take turns within each
round (ABBA across rounds), alone and beside the busy process, all in this one process; the medians over
--rounds rounds are printed with the load average.

Run: python -m benchmarks.shared_machine [--iterations 60] [--rounds 3] [--unset]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.results import read_summary

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "quickstart.yaml"

# A run in this process: the wait policy set and the thread count chosen before anything loads torch.
RUN = '''
import os, sys
import psutil
from harness import process, run

assert "torch" not in sys.modules  # libgomp has not read its environment yet
policy, threads = sys.argv[1:3]
if policy == "unset":
    os.environ.pop("OMP_WAIT_POLICY", None)
else:
    os.environ["OMP_WAIT_POLICY"] = policy
if threads == "physical":  # before issue 27: a thread per physical core, usable or not
    process.cpu_threads = lambda: max(1, (psutil.cpu_count(logical=False) or 1)
                                      // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
sys.exit(run.main(sys.argv[3:]))
'''

# name: (OMP_WAIT_POLICY, threads)
SETTINGS = {"before": ("ACTIVE", "physical"), "now": ("PASSIVE", "usable"), "unset": ("unset", "physical")}


def seconds_per_iteration(setting: str, iterations: int, folder: Path) -> float:
    """One CE run of the quickstart under `setting`, in `folder`; its s/iter past the warm-up."""
    policy, threads = SETTINGS[setting]
    out = folder / f"{setting}-{len(list(folder.iterdir()))}"
    overrides = {"optim.iterations": iterations, "run.output_dir": out, "run.reports_dir": out / "reports",
                 "run.cost_probe": "false", "run.log_interval": iterations, "eval.interval": iterations}
    command = [sys.executable, "-c", RUN, policy, threads, str(RECIPE), "--only", "ce", "--no-report",
               *(word for key, value in overrides.items() for word in ("--set", f"{key}={value}"))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {setting} run failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return read_summary(out / "quickstart" / "ce").s_per_iter


def busy_process() -> subprocess.Popen:
    """A process that keeps one of our cores busy until it is killed (as `taskset -c 0 python busy.py`)."""
    code = f"import os\nos.sched_setaffinity(0, {{{min(os.sched_getaffinity(0))}}})\nwhile True: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def measure(settings: list[str], iterations: int, rounds: int) -> dict[tuple[str, str], list[float]]:
    """s/iter of each (condition, setting), the settings taking turns (ABBA), alone and beside a busy core."""
    figures: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="shared_machine-") as scratch:
        for index in range(rounds):
            order = settings if index % 2 == 0 else settings[::-1]
            for condition in ("alone", "beside a busy core"):
                busy = busy_process() if condition != "alone" else None
                try:
                    for setting in order:
                        seconds = seconds_per_iteration(setting, iterations, Path(scratch))
                        figures.setdefault((condition, setting), []).append(seconds)
                        print(f"round {index + 1} {condition:>18} {setting:>6}: {seconds:.3f} s/iter", flush=True)
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=60, help="training iterations per run (default 60)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each setting and condition (default 3)")
    parser.add_argument("--unset", action="store_true", help="also measure with no wait policy and the old threads")
    args = parser.parse_args(argv)
    settings = ["before", "now"] + (["unset"] if args.unset else [])
    print(f"cores this process may use: {len(os.sched_getaffinity(0))}; load average before: {os.getloadavg()}")
    figures = measure(settings, args.iterations, args.rounds)
    print(f"load average after: {os.getloadavg()}")
    print(f"\nmedian s/iter over {args.rounds} rounds of {args.iterations} iterations (quickstart, ce)")
    for condition in ("alone", "beside a busy core"):
        medians = {setting: statistics.median(figures[condition, setting]) for setting in settings}
        cells = ", ".join(f"{setting} {seconds:.3f}" for setting, seconds in medians.items())
        print(f"{condition:>18}: {cells}; before / now {medians['before'] / medians['now']:.2f}x")


if __name__ == "__main__":
    main()
