"""The cost probe: paired ABBA timing of a run's step with and without its contrast term, leaving no trace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from scipy import stats

from harness import run
from harness.engine import endless, probe, set_up
from harness.engine.step import Trainer
from harness.engine.terms import CONTRAST_KINDS, ContrastKind, TermInputs
from harness.recipe import validate
from tests.test_contrast_kinds import KINDS
from tests.test_run import tiny_recipe, write


def finished(tmp_path: Path, kind: str, name: str, **run_section: object) -> dict:
    """The summary of a tiny run of contrast kind `kind` (its defaults) named `name`, 6 iterations long."""
    tree = tiny_recipe(tmp_path, optim={"iterations": 6}, loss={"contrast": {"kind": kind}},
                       run={"name": name, "deterministic": True, "cost_probe": True, **run_section})
    assert run.main([str(write(tmp_path, tree)), "--no-report"]) == 0
    return json.loads((tmp_path / "results" / name / "default" / "summary.json").read_text())


@pytest.mark.slow  # two runs per kind, one with the probe's 88 steps
@pytest.mark.parametrize("kind", KINDS)
def test_the_probe_leaves_no_trace_and_reports_a_paired_cost(tmp_path: Path, kind: str) -> None:
    probed, unprobed = finished(tmp_path, kind, "probed"), finished(tmp_path, kind, "unprobed", cost_probe=False)
    for key in ("miou", "per_class_iou", "bank_digest", "model_sha256"):
        assert probed.get(key) == unprobed.get(key), key
    assert "cost_ratio" not in unprobed
    if probed.get("cost_probe_skipped") == "no contrast term":
        assert "cost_ratio" not in probed and probed["bank_bytes"] == 0
        return
    assert probed.get("bank_digest") is not None or probed["bank_bytes"] == 0
    low, high = probed["cost_ratio_ci95"]
    assert probed["cost_probe_rounds"] == probe.MIN_ROUNDS and 0 < low <= probed["cost_ratio"] <= high
    assert probed["contrast_extra_memory_kind"] == "rss" and isinstance(probed["contrast_extra_memory_bytes"], int)
    assert isinstance(probed["contrast_ms_per_step"], float)


def test_the_probe_is_as_long_as_a_few_percent_of_the_run_within_bounds() -> None:
    assert probe.probe_rounds(100) == probe.MIN_ROUNDS
    assert probe.probe_rounds(10_000) == 50  # 2 % of 10k steps, 4 steps a round
    assert probe.probe_rounds(1_000_000) == probe.MAX_ROUNDS


@pytest.mark.parametrize("count", [6, 20, 41, 100])
def test_the_median_interval_covers_as_a_binomial_says(count: int) -> None:
    low, high = probe.median_interval(list(range(count)))
    rank = low + 1  # 1-based order statistic
    coverage = 1 - 2 * stats.binom.cdf(rank - 1, count, 0.5)
    assert coverage >= 0.95 and high == count - rank
    assert 1 - 2 * stats.binom.cdf(rank, count, 0.5) < 0.95  # the next narrower interval would not cover


def test_paired_cost_pairs_each_round() -> None:
    a = [2.0, 2.0, 3.0, 3.0]  # two rounds of the variant's steps
    b = [1.0, 1.0, 1.0, 1.0]
    ratio, interval, difference_ms = probe.paired_cost(a, b)
    assert ratio == 2.5 and interval == (2.0, 3.0) and difference_ms == 1500.0
    assert probe.round_ratios([1.0, 3.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]) == [2.0, 1.0]


def test_sides_alternate_in_mirrored_order_on_each_rounds_batches() -> None:
    seen = []
    steps = {side: (lambda micro, iteration, side=side: seen.append((side, micro[0], iteration))) for side in "XYZ"}
    clock, memory = probe.alternate(steps, iter([["first"], ["second"]]), 2, 7, torch.device("cpu"))
    assert [side for side, _, _ in seen] == list("XYZZYX") * 2
    assert [batch for _, batch, _ in seen] == ["first"] * 6 + ["second"] * 6 and {it for _, _, it in seen} == {7}
    assert all(len(clock.seconds(side)) == 2 * probe.STEPS_PER_ROUND for side in "XYZ")
    assert set(memory.phases) == {"between", "X", "Y", "Z"}


class NoOpTerm:
    """A contrast term that costs nothing and returns no loss."""

    bank = None

    def __call__(self, output: object, batch: object, with_loss: bool = True, push: bool = True) -> None:
        return None


@pytest.fixture
def no_op_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A prepared tiny run whose contrast kind is a registered no-op."""
    monkeypatch.setitem(CONTRAST_KINDS, "noop", ContrastKind(lambda inputs: NoOpTerm()))
    tree = tiny_recipe(tmp_path, loss={"contrast": {"kind": "noop"}}, data={"num_workers": 0})
    return set_up(Accelerator(cpu=True), validate(tree))


def test_probe_steps_alternate_abba_on_shared_batches(no_op_setup, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    step = Trainer.step

    def recording(self: Trainer, batch: dict, iteration: int) -> dict:
        seen.append((self.contrast is not None, int(batch["index"].sum())))
        return step(self, batch, iteration)

    monkeypatch.setattr(Trainer, "step", recording)
    setup = no_op_setup
    probe.measure_cost(setup, endless(setup.train_loader, setup.train_set, 0), rounds=3)
    sides = "".join("A" if has_contrast else "B" for has_contrast, _ in seen)
    assert sides == probe.ORDER * (probe.WARMUP_ROUNDS + 3)
    rounds = [seen[start:start + 4] for start in range(0, len(seen), 4)]
    assert all(len({batch for _, batch in each}) == 1 for each in rounds)  # one batch per round


@pytest.mark.slow
def test_a_no_op_contrast_costs_nothing_within_the_interval(no_op_setup) -> None:
    """At 95 % a no-op's interval misses 1.00 one time in twenty by chance: two of three probes must hold it."""
    setup = no_op_setup
    batches = endless(setup.train_loader, setup.train_set, 0)
    intervals = [probe.measure_cost(setup, batches, rounds=probe.MIN_ROUNDS).ratio_ci95 for _ in range(3)]
    assert sum(low <= 1.0 <= high for low, high in intervals) >= 2, intervals
    assert np.isfinite(np.asarray(intervals)).all()


def test_term_inputs_reach_a_registered_kind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    received = []
    monkeypatch.setitem(CONTRAST_KINDS, "noop", ContrastKind(lambda inputs: received.append(inputs) or NoOpTerm()))
    set_up(Accelerator(cpu=True), validate(tiny_recipe(tmp_path, loss={"contrast": {"kind": "noop"}},
                                                       data={"num_workers": 0})))
    (inputs,) = received
    assert isinstance(inputs, TermInputs) and inputs.num_classes == 11 and inputs.train_images == 8
    assert inputs.feature_dim == 16 and inputs.cfg.kind == "noop"
