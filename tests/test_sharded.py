"""The sharded region bank: its slots against the replicated bank's, and its Eq. 4 against
region_contrast_loss, in one process (a world of one, simulated shards) and on two real gloo
ranks under torchrun (tests/sharded_worker.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from harness.contrast import (
    RegionBank,
    ShardedRegionBank,
    region_bank_bytes,
    region_contrast_loss,
    sharded_bank_bytes,
    sharded_region_contrast_loss,
)
from harness.contrast.sharded import shard_size
from harness.engine.checkpoint import load_bank_shard, save_bank_shard
from tests.conftest import CPU_ENV, REPO, check, seeded, torchrun

NUM_CLASSES, DIM = 5, 8


def random_pushes(seed: int, pushes: int = 4, entries: int = 9) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of entries [M,C] and labels [M]; the last one holds 12 entries of class 0, more than a queue."""
    generator = seeded(seed)
    batches = [
        (torch.randn(entries, DIM, generator=generator), torch.randint(0, NUM_CLASSES, (entries,), generator=generator))
        for _ in range(pushes)
    ]
    return [*batches, (torch.randn(12, DIM, generator=generator), torch.zeros(12, dtype=torch.long))]


def keys_of(state: dict[str, torch.Tensor], prefix: str = "") -> torch.Tensor:
    """The queues [N,K,C] of a ClassQueues state dict (its slots without the spare)."""
    return state[f"{prefix}slots"][:-1].view(NUM_CLASSES, -1, DIM)


def merge_shards(shards: list[dict], size: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The replicated bank's state rebuilt from every rank's shard state: local slot j of rank r is global slot jW + r."""
    world = len(shards)
    keys = torch.zeros(NUM_CLASSES, size, DIM, dtype=dtype)
    for rank, shard in enumerate(shards):
        keys[:, rank::world] = keys_of(shard, "queues.")
    return {"keys": keys, "ptr": shards[0]["ptr"], "filled": sum(shard["queues.filled"] for shard in shards)}


def assert_same_bank(replicated: dict, shards: list[dict], size: int, dtype: torch.dtype) -> None:
    """Every rank agrees on the write pointers and the shards together are the replicated bank, bitwise."""
    assert all(torch.equal(shard["ptr"], shards[0]["ptr"]) for shard in shards)
    merged = merge_shards(shards, size, dtype)
    assert torch.equal(merged["keys"], keys_of(replicated))
    assert all(torch.equal(merged[name], replicated[name]) for name in ("ptr", "filled"))


# ---------------------------------------------------------------- one process


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("size", [5, 6, 7])
def test_simulated_shards_are_the_replicated_bank(world: int, size: int) -> None:
    replicated = RegionBank(NUM_CLASSES, size, DIM, torch.bfloat16)
    shards = [ShardedRegionBank(NUM_CLASSES, size, DIM, torch.bfloat16, rank, world) for rank in range(world)]
    for step, (entries, labels) in enumerate(random_pushes(seed=size)):
        for bank in (replicated, *shards):
            bank.push(entries, labels)
        if step == 0:  # queues half full: only the first global slots are taken
            assert 0 < replicated.filled.sum() < NUM_CLASSES * size
            assert_same_bank(replicated.state_dict(), [shard.state_dict() for shard in shards], size, torch.bfloat16)
    assert (replicated.ptr != 0).any()  # the pushes wrapped around
    assert_same_bank(replicated.state_dict(), [shard.state_dict() for shard in shards], size, torch.bfloat16)


@pytest.mark.parametrize(("size", "world"), [(6, 2), (7, 2), (20210, 8), (2, 4)])
def test_each_rank_holds_its_share_of_the_slots(size: int, world: int) -> None:
    sizes = [shard_size(size, rank, world) for rank in range(world)]
    assert sum(sizes) == size and max(sizes) - min(sizes) <= 1
    banks = [ShardedRegionBank(19, size, 16, torch.bfloat16, rank, world) for rank in range(world)]
    assert [bank.queues.keys.shape[1] for bank in banks] == sizes
    assert [bank.nbytes() for bank in banks] == [
        sharded_bank_bytes(19, size, 16, rank, world, torch.bfloat16) for rank in range(world)
    ]
    key_bytes = [bank.queues.keys.nbytes for bank in banks]
    spare = 16 * torch.bfloat16.itemsize  # each rank's queues keep one spare key
    assert sum(key_bytes) == region_bank_bytes(19, size, 16, torch.bfloat16) - 2 * 19 * 8 - spare  # less the counters


@pytest.mark.parametrize("chunk_size", [1, 4, None])
@pytest.mark.parametrize("tau", [0.1, 0.01])
def test_world_of_one_is_region_contrast_loss(chunk_size: int | None, tau: float) -> None:
    replicated, sharded = RegionBank(NUM_CLASSES, 7, DIM), ShardedRegionBank(NUM_CLASSES, 7, DIM)
    for entries, labels in random_pushes(seed=3, pushes=2):
        replicated.push(entries, labels)
        sharded.push(entries, labels)
    generator = seeded(4)
    queries = torch.randn(10, DIM, generator=generator, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (10,), generator=generator)
    expected = region_contrast_loss(queries, labels, replicated.keys, replicated.valid, tau)
    loss = sharded_region_contrast_loss(queries, labels, sharded, tau, chunk_size)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and expected.item() > 0
    assert torch.allclose(torch.autograd.grad(loss, queries)[0], torch.autograd.grad(expected, queries)[0], atol=1e-6)


def test_empty_bank_gives_zero_loss_and_no_gradient() -> None:
    queries = torch.randn(4, DIM, requires_grad=True)
    loss = sharded_region_contrast_loss(queries, torch.arange(4), ShardedRegionBank(NUM_CLASSES, 6, DIM), 0.1)
    loss.backward()
    assert loss.item() == 0 and torch.equal(queries.grad, torch.zeros_like(queries))


def test_a_shard_of_another_world_is_refused() -> None:
    with pytest.raises(ValueError, match="rank must lie in"):
        ShardedRegionBank(NUM_CLASSES, 6, DIM, rank=2, world_size=2)
    shard = ShardedRegionBank(NUM_CLASSES, 6, DIM, rank=1, world_size=2)
    with pytest.raises(ValueError, match="shard 1 of 2, but this process is rank 0 of 1"):
        sharded_region_contrast_loss(torch.randn(3, DIM), torch.arange(3), shard, 0.1)


def test_size_zero_bank_takes_no_entries() -> None:
    bank = ShardedRegionBank(NUM_CLASSES, 0, DIM, rank=1, world_size=2)
    bank.push(*random_pushes(seed=5, pushes=1)[0])
    assert bank.nbytes() == 3 * NUM_CLASSES * 8 + DIM * 4 and not bank.ptr.any()  # counters and the spare key


def test_checkpoint_keeps_each_rank_its_own_shard(tmp_path: Path) -> None:
    shards = [ShardedRegionBank(NUM_CLASSES, 6, DIM, rank=rank, world_size=2) for rank in (0, 1)]
    for entries, labels in random_pushes(seed=6):
        for shard in shards:
            shard.push(entries, labels)
    for rank, shard in enumerate(shards):
        save_bank_shard(shard, tmp_path, rank, 2)
    for rank, shard in enumerate(shards):
        resumed = ShardedRegionBank(NUM_CLASSES, 6, DIM, rank=rank, world_size=2)
        load_bank_shard(resumed, tmp_path, rank, 2)
        assert all(torch.equal(resumed.state_dict()[name], value) for name, value in shard.state_dict().items())
    with pytest.raises(FileNotFoundError, match="another world size"):
        load_bank_shard(ShardedRegionBank(NUM_CLASSES, 6, DIM, rank=0, world_size=4), tmp_path, 0, 4)


# ---------------------------------------------------------------- two gloo ranks


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """What each of two real gloo ranks recorded in tests/sharded_worker.py."""
    out = tmp_path_factory.mktemp("sharded")
    command = torchrun(str(REPO / "tests" / "sharded_worker.py"), str(out))
    check(subprocess.run(command, env=CPU_ENV, capture_output=True, text=True, timeout=300))
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]


@pytest.mark.distributed
def test_sharded_loss_and_gradients_equal_the_replicated_ones(two_ranks: list[dict]) -> None:
    compared = 0
    for rank in two_ranks:
        for geometry in rank["geometries"]:
            for step in geometry["steps"]:
                (expected, expected_grad), (loss, grad) = step["replicated"], step["sharded"]
                assert loss == pytest.approx(expected, abs=1e-5)
                assert grad.shape == (step["queries"], 8) and torch.allclose(grad, expected_grad, atol=1e-5)
                compared += expected > 0 and bool(grad.any())
    # Per geometry, a bank and queries at steps 1-4 on rank 0 and 1, 3, 4 on rank 1 (no queries at step 2).
    assert compared == 2 * (4 + 3)
    assert [step["queries"] for step in two_ranks[1]["geometries"][0]["steps"]][2] == 0


@pytest.mark.distributed
def test_model_gradients_after_ddp_averaging_equal_the_replicated_ones(two_ranks: list[dict]) -> None:
    replicated, sharded = two_ranks[0]["ddp"]["replicated"], two_ranks[0]["ddp"]["sharded"]
    assert replicated.abs().max() > 0.1 and torch.allclose(sharded, replicated, atol=1e-5)
    assert torch.equal(two_ranks[1]["ddp"]["sharded"], sharded)  # DDP left both ranks the same gradient


@pytest.mark.distributed
def test_each_rank_holds_half_the_bank(two_ranks: list[dict]) -> None:
    geometry = [rank["geometries"][0] for rank in two_ranks]  # 6 slots per class, fp32
    assert [keys_of(summary["sharded"], "queues.").shape for summary in geometry] == [(NUM_CLASSES, 3, DIM)] * 2
    # While a queue fills, rank r holds its global slots r, r + 2, ...: half, rounded its way.
    for rank, summary in enumerate(geometry):
        expected = [shard_size(int(filled), rank, 2) for filled in summary["replicated"]["filled"]]
        assert summary["sharded"]["queues.filled"].tolist() == expected
    assert geometry[0]["replicated"]["filled"].sum() > NUM_CLASSES * 4  # most queues were full
    replicated_keys = keys_of(geometry[0]["replicated"]).nbytes
    assert all(keys_of(summary["sharded"], "queues.").nbytes * 2 == replicated_keys for summary in geometry)
    assert all(summary["sharded_nbytes"] < 0.6 * summary["replicated_nbytes"] for summary in geometry)


@pytest.mark.distributed
def test_union_of_the_rank_shards_is_the_replicated_bank(two_ranks: list[dict]) -> None:
    for summaries in zip(*(rank["geometries"] for rank in two_ranks)):
        size, dtype = summaries[0]["size"], summaries[0]["dtype"]
        assert torch.equal(keys_of(summaries[0]["replicated"]), keys_of(summaries[1]["replicated"]))
        assert_same_bank(summaries[0]["replicated"], [summary["sharded"] for summary in summaries], size, dtype)
