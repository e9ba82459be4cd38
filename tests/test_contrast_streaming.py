"""The chunked Eq. 4 against a dense float64 reference: values, gradients, memory, bank precision."""

from __future__ import annotations

import pydantic
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from harness.contrast import (
    CHUNK_BUDGET_BYTES,
    PixelBank,
    RegionBank,
    auto_chunk_size,
    in_batch_contrast_loss,
    pixel_contrast_loss,
    region_contrast_loss,
)
from harness.recipe import ContrastConfig
from tests.conftest import dense_bank_loss, dense_info_nce, seeded

# 1 key per chunk, chunks that split a class's 5-slot queue, one chunk per queue, all in one chunk.
CHUNKS = [1, 3, 5, 1000]


def holey_bank(seed):
    """Bank [4,5,6] of unnormalised keys: class 1 empty, class 3 with one key, the rest 60% full."""
    generator = seeded(seed)
    keys = 3 * torch.randn(4, 5, 6, generator=generator)
    valid = torch.rand(4, 5, generator=generator) < 0.6
    valid[1] = False
    valid[3] = torch.tensor([False, False, True, False, False])
    return keys, valid


def queries_of_every_class(seed, count=9):
    """Queries [count,6] cycling through classes 0-3 (class 1 has no positive in holey_bank)."""
    return torch.randn(count, 6, generator=seeded(seed), requires_grad=True), torch.arange(count) % 4


def loss_and_grad(loss_fn, leaf):
    """A loss and its gradient with respect to `leaf`."""
    loss = loss_fn()
    return loss, torch.autograd.grad(loss, leaf)[0]


@pytest.mark.parametrize("tau", [0.1, 0.02])
@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_streaming_matches_dense_reference(chunk_size, tau):
    bank_keys, bank_valid = holey_bank(chunk_size)
    queries, labels = queries_of_every_class(chunk_size + 1)
    loss, grad = loss_and_grad(
        lambda: region_contrast_loss(queries, labels, bank_keys, bank_valid, tau, chunk_size), queries
    )
    expected, expected_grad = loss_and_grad(
        lambda: dense_bank_loss(queries, labels, bank_keys, bank_valid, tau), queries
    )
    assert loss.dtype == torch.float32 and loss.item() > 0
    torch.testing.assert_close(loss.double(), expected, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-6)


def test_chunk_size_changes_nothing_but_rounding():
    bank_keys, bank_valid = holey_bank(0)
    queries, labels = queries_of_every_class(1, count=30)
    results = [
        loss_and_grad(lambda: region_contrast_loss(queries, labels, bank_keys, bank_valid, 0.05, size), queries)
        for size in [None, *CHUNKS]
    ]
    for loss, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(grad, results[0][1], atol=1e-6, rtol=1e-5)


def test_no_grad_gives_the_same_loss():
    bank_keys, bank_valid = holey_bank(2)
    queries, labels = queries_of_every_class(3)
    with_graph = region_contrast_loss(queries, labels, bank_keys, bank_valid, 0.1, 3)
    with torch.no_grad():
        without = region_contrast_loss(queries, labels, bank_keys, bank_valid, 0.1, 3)
    assert not without.requires_grad
    torch.testing.assert_close(without, with_graph.detach())


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_no_positive_anywhere_is_a_zero_with_a_zero_gradient(chunk_size):
    bank_keys, bank_valid = holey_bank(4)
    queries = torch.randn(3, 6, requires_grad=True)
    loss = region_contrast_loss(queries, torch.tensor([1, 1, 1]), bank_keys, bank_valid, 0.1, chunk_size)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(queries.grad, torch.zeros(3, 6))


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 100])
def test_in_batch_streaming_matches_dense_reference_through_queries_and_keys(chunk_size):
    # Gradients reach the centers both as queries and as keys (pass 3 of the core).
    centers = torch.randn(3, 4, 6, generator=seeded(chunk_size), requires_grad=True)
    valid = torch.rand(3, 4, generator=seeded(chunk_size + 1)) < 0.7
    loss, grad = loss_and_grad(lambda: in_batch_contrast_loss(centers, valid, 0.1, chunk_size=chunk_size), centers)
    keys = centers.reshape(12, 6)  # [B,N,C] -> [BN,C]
    key_labels = torch.arange(4).repeat(3)
    query_index = valid.flatten().nonzero()[:, 0]  # [B,N] -> [BN] -> [M]
    usable = valid.reshape(1, 12) & (torch.arange(12)[None, :] != query_index[:, None])  # [M,BN]
    expected, expected_grad = loss_and_grad(
        lambda: dense_info_nce(keys[query_index], key_labels[query_index], keys, key_labels, usable, 0.1), centers
    )
    torch.testing.assert_close(loss.double(), expected, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 6, 1000])
def test_pixel_loss_streams_like_the_region_loss(chunk_size):
    features = torch.randn(2, 4, 5, 5, generator=seeded(0), requires_grad=True)
    labels = torch.randint(0, 3, (2, 5, 5), generator=seeded(1))
    bank = PixelBank(3, memory_size=8, dim=4, pixel_update_freq=2)
    bank.push(features, labels, generator=seeded(2))
    loss, grad = loss_and_grad(
        lambda: pixel_contrast_loss(features, labels, labels, bank, 0.1, 20, 4, seeded(3), chunk_size=chunk_size),
        features,
    )
    whole, whole_grad = loss_and_grad(
        lambda: pixel_contrast_loss(features, labels, labels, bank, 0.1, 20, 4, seeded(3), chunk_size=10**6),
        features,
    )
    torch.testing.assert_close(loss, whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad, whole_grad, atol=1e-6, rtol=1e-5)


def test_chunk_size_below_one_is_rejected():
    bank_keys, bank_valid = holey_bank(0)
    with pytest.raises(ValueError, match="chunk_size"):
        region_contrast_loss(torch.randn(2, 6), torch.tensor([0, 2]), bank_keys, bank_valid, 0.1, 0)


# ---------------------------------------------------------------------------
# Memory: no tensor grows with queries x bank entries, and the bank is never cast whole
# ---------------------------------------------------------------------------


class LargestOutputs(TorchDispatchMode):
    """Records the largest numel of any newly allocated op output (not a view), per dtype, forward and backward."""

    def __init__(self):
        super().__init__()
        self.largest = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {arg.untyped_storage().data_ptr() for arg in args if isinstance(arg, torch.Tensor)}
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                self.largest[tensor.dtype] = max(self.largest.get(tensor.dtype, 0), tensor.numel())
        return out


def record_largest_outputs(bank_keys, keys_need_grad):
    """Loss and backward of 12 queries against `bank_keys` [4,50,8] in chunks of 100 slots (two class queues), recorded."""
    keys = bank_keys.detach().requires_grad_(keys_need_grad)
    queries = torch.randn(12, 8, generator=seeded(0), requires_grad=True)
    valid = torch.ones(4, 50, dtype=torch.bool)
    with LargestOutputs() as recorder:
        region_contrast_loss(queries, torch.arange(12) % 4, keys, valid, 0.1, 100).backward()
    assert torch.isfinite(queries.grad).all() and (keys.grad is not None) == keys_need_grad
    return recorder.largest


@pytest.mark.parametrize("keys_need_grad", [False, True])
def test_every_intermediate_is_bounded_by_one_chunk(keys_need_grad):
    largest = record_largest_outputs(torch.randn(4, 50, 8, generator=seeded(1)), keys_need_grad)
    # One chunk's scores [M,S] = 12 x 100 or keys [S,C], the queries [M,C], labels and masks with one
    # entry per bank slot, and (keys with a graph, pass 3) their gradient [NK,C]; never [M,NK] = 2400.
    bound = max(12 * 100, 100 * 8, 12 * 8, 200 * (8 if keys_need_grad else 1))
    assert max(largest.values()) <= bound < 12 * 200


def test_a_low_precision_bank_is_read_chunk_by_chunk_in_float32():
    bank = RegionBank(4, 50, 8, dtype=torch.bfloat16)
    bank.push(torch.randn(200, 8, generator=seeded(2)), torch.arange(200) % 4)
    largest = record_largest_outputs(bank.keys, keys_need_grad=False)
    # An fp32 copy of the whole bank would hold 1600 values.
    assert largest[torch.float32] <= max(12 * 100, 100 * 8, 12 * 8) < bank.keys.numel()


def test_auto_chunk_size_fits_the_budget():
    chunk = auto_chunk_size(160, 256)
    assert 160 * chunk * torch.float32.itemsize <= CHUNK_BUDGET_BYTES
    assert auto_chunk_size(160, 256, 2 * CHUNK_BUDGET_BYTES) in (2 * chunk, 2 * chunk + 1)
    assert auto_chunk_size(320, 256) < chunk
    assert auto_chunk_size(10**9, 256) == 1


# ---------------------------------------------------------------------------
# Bank storage precision
# ---------------------------------------------------------------------------


def twin_banks(dtype):
    """A float32 bank and a `dtype` bank [19,40,32] that received the same pushes."""
    entries = torch.randn(700, 32, generator=seeded(0))
    labels = torch.randint(0, 19, (700,), generator=seeded(1))
    banks = RegionBank(19, 40, 32), RegionBank(19, 40, 32, dtype=dtype)
    for bank in banks:
        bank.push(entries, labels)
    return banks


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_storage_halves_the_keys_and_the_loss_reads_them_in_float32(dtype):
    full, low = twin_banks(dtype)
    assert low.keys.nbytes * 2 == full.keys.nbytes
    queries, labels = torch.randn(30, 32, generator=seeded(2)), torch.arange(30) % 19
    loss = region_contrast_loss(queries, labels, low.keys, low.valid, 0.1, chunk_size=64)
    upcast = region_contrast_loss(queries, labels, low.keys.float(), low.valid, 0.1, chunk_size=64)
    assert loss.dtype == torch.float32 and torch.equal(loss, upcast)


@pytest.mark.parametrize(("dtype", "unit_roundoff"), [(torch.bfloat16, 2.0**-8), (torch.float16, 2.0**-11)])
def test_low_precision_storage_moves_the_loss_less_than_its_rounding_bound(dtype, unit_roundoff):
    full, low = twin_banks(dtype)
    queries, labels = torch.randn(30, 32, generator=seeded(3)), torch.arange(30) % 19
    tau = 0.1
    reference = region_contrast_loss(queries, labels, full.keys, full.valid, tau)
    stored = region_contrast_loss(queries, labels, low.keys, low.valid, tau)
    # Rounding a unit key moves it by at most u (the unit roundoff), by 2u once renormalised, so
    # each score by 2u / tau; a query's loss moves by at most twice its largest score change
    # (its gradient has L1 norm <= 1 on the positives' own scores and <= 1 through their L).
    bound = 2 * 2 * unit_roundoff / tau
    difference = (stored - reference).abs().item()
    assert 0 < difference < bound


# ---------------------------------------------------------------------------
# Recipe fields
# ---------------------------------------------------------------------------


def test_recipe_chunk_size_and_bank_dtype():
    assert ContrastConfig().chunk_size is None and ContrastConfig().bank_dtype == "float32"
    config = ContrastConfig(chunk_size=4096, bank_dtype="bfloat16")
    assert getattr(torch, config.bank_dtype) is torch.bfloat16
    for bad in [{"chunk_size": 0}, {"bank_dtype": "int8"}]:
        with pytest.raises(pydantic.ValidationError):
            ContrastConfig(**bad)
