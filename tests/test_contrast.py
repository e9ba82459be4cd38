"""Region centers, banks and contrastive losses against brute-force loops written from the paper."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.contrast import (
    AllPixelBank,
    PixelBank,
    RegionBank,
    all_pixel_bank_bytes,
    in_batch_contrast_loss,
    pixel_bank_bytes,
    pixel_contrast_loss,
    region_bank_bytes,
    region_centers,
    region_contrast_loss,
    region_entries,
    sample_anchors,
)
from harness.contrast.sampling import class_pixels
from harness.labels import IGNORE_INDEX
from tests.conftest import dense_info_nce, seeded

IGNORE = IGNORE_INDEX
VARIANTS = ["average", "ep_hp", "weighted"]


def all_valid(*shape):
    """A bool mask of the given shape, all True."""
    return torch.ones(*shape, dtype=torch.bool)


# ---------------------------------------------------------------------------
# Brute-force references, one pixel / one key at a time, in float64
# ---------------------------------------------------------------------------


def brute_centers(features, logits, labels, num_classes, variant):
    """Eq. 2 / Eq. 3 with explicit loops over images, classes and pixels."""
    batch, dim, height, width = features.shape
    probs = logits.double().softmax(1)
    centers = [[torch.zeros(dim, dtype=torch.float64) for _ in range(num_classes)] for _ in range(batch)]
    valid = torch.zeros(batch, num_classes, dtype=torch.bool)
    for b in range(batch):
        for i in range(num_classes):
            total, count = torch.zeros(dim, dtype=torch.float64), 0
            for y in range(height):
                for x in range(width):
                    truth = int(labels[b, y, x])
                    if truth == IGNORE:
                        continue
                    predicted = int(probs[b, :, y, x].argmax())
                    confidence = float(probs[b, :, y, x].max())
                    pixel = features[b, :, y, x].double()
                    if variant == "average" and predicted == i:
                        total, count = total + pixel, count + 1
                    elif variant != "average" and truth == i:
                        easy = variant == "weighted" and predicted == i
                        total, count = total + (1 - confidence if easy else 1.0) * pixel, count + 1
            valid[b, i] = count > 0
            if count:
                centers[b][i] = total / count
    return torch.stack([torch.stack(row) for row in centers]), valid


def brute_info_nce(queries, query_labels, keys, key_labels, usable, tau):
    """Eq. 4 literally: exp of every dot product, mean over positives, mean over queries."""
    losses = []
    for m in range(len(queries)):
        q = queries[m].double() / queries[m].double().norm()
        scores = [q @ (k.double() / k.double().norm()) / tau for k in keys]
        positives = [j for j in range(len(keys)) if usable[m][j] and key_labels[j] == query_labels[m]]
        negatives = [j for j in range(len(keys)) if usable[m][j] and key_labels[j] != query_labels[m]]
        if not positives:
            continue
        negative_sum = sum((torch.exp(scores[j]) for j in negatives), torch.zeros((), dtype=torch.float64))
        terms = [-torch.log(torch.exp(scores[j]) / (torch.exp(scores[j]) + negative_sum)) for j in positives]
        losses.append(sum(terms) / len(terms))
    return sum(losses) / len(losses) if losses else torch.zeros((), dtype=torch.float64)


def brute_bank_loss(queries, query_labels, bank_keys, bank_valid, tau):
    """Eq. 4 against a per-class bank [N,K,C]: every valid slot is a key of its row's class."""
    slots = [(n, k) for n in range(bank_keys.shape[0]) for k in range(bank_keys.shape[1])]
    keys = [bank_keys[n, k] for n, k in slots]
    usable = [[bool(bank_valid[n, k]) for n, k in slots]] * len(queries)
    return brute_info_nce(queries, query_labels.tolist(), keys, [n for n, _ in slots], usable, tau)


def brute_in_batch(centers, valid, tau, query_images):
    """In-batch Eq. 4: keys are all valid centers of the batch except the query itself."""
    batch, num_classes, _ = centers.shape
    slots = [(b, n) for b in range(batch) for n in range(num_classes)]
    queries = [(b, n) for b, n in slots if b in query_images and valid[b, n]]
    usable = [[bool(valid[s]) and s != query for s in slots] for query in queries]
    return brute_info_nce(
        [centers[q] for q in queries], [n for _, n in queries],
        [centers[s] for s in slots], [n for _, n in slots], usable, tau,
    )


def random_segmentation(seed, batch, dim, height, width, num_classes, present):
    """Features, logits and labels using only `present` classes, about 20% ignored pixels."""
    generator = seeded(seed)
    features = torch.randn(batch, dim, height, width, generator=generator)
    logits = 2 * torch.randn(batch, num_classes, height, width, generator=generator)
    logits[:, present:] -= 20  # classes never predicted
    labels = torch.randint(0, present, (batch, height, width), generator=generator)
    labels[torch.rand(batch, height, width, generator=generator) < 0.2] = IGNORE
    return features, logits, labels


def random_bank(seed, num_classes, size, dim, fill=0.6):
    """Bank keys [N,K,C] full of unnormalised noise, with a random valid mask."""
    generator = seeded(seed)
    keys = 3 * torch.randn(num_classes, size, dim, generator=generator)
    return keys, torch.rand(num_classes, size, generator=generator) < fill


# ---------------------------------------------------------------------------
# Region centers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 4, 3), (3, 5, 3, 3, 6, 4), (1, 2, 2, 7, 3, 1)])
def test_region_centers_match_brute_force(variant, shape):
    batch, dim, height, width, num_classes, present = shape
    features, logits, labels = random_segmentation(sum(shape), *shape)
    features.requires_grad_(True)
    centers, valid = region_centers(features, logits, labels, num_classes, variant)
    expected, expected_valid = brute_centers(features, logits, labels, num_classes, variant)
    assert centers.dtype == torch.float32 and centers.shape == (batch, num_classes, dim)
    assert torch.equal(valid, expected_valid)
    assert not valid[:, present:].any()  # absent classes are never valid
    torch.testing.assert_close(centers.double(), expected, atol=1e-5, rtol=1e-5)
    weights = torch.randn(batch, num_classes, dim, dtype=torch.float64)
    (grad,) = torch.autograd.grad((centers.double() * weights).sum(), features)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), features)
    torch.testing.assert_close(grad, expected_grad.float(), atol=1e-5, rtol=1e-5)


def hand_case():
    """Four pixels in a row, two channels, three classes (class 2 nowhere).

    features (per pixel): p0=(1,2), p1=(3,4), p2=(5,6), p3=(7,8)
    ground truth:          0,      0,      1,      ignore
    softmax:  p0 (.75,.25,0) -> pred 0, c=.75 (easy positive of 0)
              p1 (.25,.75,0) -> pred 1, c=.75 (hard positive of 0)
              p2 (.2, .8, 0) -> pred 1, c=.8  (easy positive of 1)
              p3 (.75,.25,0) -> pred 0, but its label is ignored
    """
    features = torch.tensor([[1.0, 3, 5, 7], [2, 4, 6, 8]]).reshape(1, 2, 1, 4)  # [C,W] -> [B,C,H,W]
    probs = torch.tensor([[0.75, 0.25, 0.2, 0.75], [0.25, 0.75, 0.8, 0.25], [0, 0, 0, 0]])
    logits = torch.log(probs.clamp_min(1e-30)).reshape(1, 3, 1, 4)  # [N,W] -> [B,N,H,W]
    labels = torch.tensor([[[0, 0, 1, IGNORE]]])
    return features, logits, labels


@pytest.mark.parametrize(
    ("variant", "class0", "class1"),
    [
        # predicted 0: p0 only (p3 is ignored) -> (1,2); predicted 1: p1, p2 -> ((3+5)/2, (4+6)/2)
        ("average", [1.0, 2.0], [4.0, 5.0]),
        # truth 0: p0, p1 -> (2,3); truth 1: p2 -> (5,6)
        ("ep_hp", [2.0, 3.0], [5.0, 6.0]),
        # class 0: (0.25*(1,2) + 1*(3,4)) / 2 = (1.625, 2.25); class 1: 0.2*(5,6) / 1 = (1, 1.2)
        ("weighted", [1.625, 2.25], [1.0, 1.2]),
    ],
)
def test_region_centers_by_hand(variant, class0, class1):
    centers, valid = region_centers(*hand_case(), num_classes=3, variant=variant)
    torch.testing.assert_close(centers[0, :2], torch.tensor([class0, class1]))
    assert valid.tolist() == [[True, True, False]]
    assert torch.equal(centers[0, 2], torch.zeros(2))


def test_confidence_weight_carries_no_gradient():
    features, logits, labels = hand_case()
    logits.requires_grad_(True)
    features.requires_grad_(True)
    centers, _ = region_centers(features, logits, labels, 3, "weighted")
    feature_grad, logit_grad = torch.autograd.grad(centers.sum(), [features, logits], allow_unused=True)
    assert logit_grad is None
    # d(sum of centers)/dp = sum over classes of weight / count: p0 .25/2, p1 1/2, p2 .2/1, p3 0
    torch.testing.assert_close(feature_grad[0, 0, 0], torch.tensor([0.125, 0.5, 0.2, 0.0]))


def test_unknown_variant_names_the_choices():
    with pytest.raises(KeyError, match="ep_hp"):
        region_centers(*hand_case(), num_classes=3, variant="median")


def test_region_entries_are_image_major_with_fixed_shapes():
    centers = torch.arange(12.0).reshape(2, 3, 2)  # [BNC] -> [B,N,C]
    valid = torch.tensor([[True, False, True], [False, True, False]])
    vectors, labels, present = region_entries(centers, valid)
    assert vectors.shape == (6, 2) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert present.tolist() == [True, False, True, False, True, False]
    assert torch.equal(vectors[present], centers[[0, 0, 1], [0, 2, 1]])


def test_padding_queries_count_for_nothing():
    bank_keys, bank_valid = random_bank(3, 4, 5, 6)
    queries, labels = torch.randn(7, 6, generator=seeded(4)), torch.arange(7) % 4
    present = torch.tensor([True, False, True, True, False, False, True])
    padded = region_contrast_loss(queries, labels, bank_keys, bank_valid, 0.1, query_valid=present)
    dropped = region_contrast_loss(queries[present], labels[present], bank_keys, bank_valid, 0.1)
    assert padded.item() == pytest.approx(dropped.item(), rel=1e-6)


# ---------------------------------------------------------------------------
# Region contrast loss (Eq. 4)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.5, 0.1, 0.01])
@pytest.mark.parametrize("geometry", [(5, 3, 4, 6), (8, 4, 3, 2), (3, 2, 1, 5)])
def test_region_loss_and_gradient_match_brute_force(tau, geometry):
    queries_count, num_classes, size, dim = geometry
    bank_keys, bank_valid = random_bank(queries_count + size, num_classes, size, dim)
    queries = torch.randn(queries_count, dim, generator=seeded(dim), requires_grad=True)
    query_labels = torch.arange(queries_count) % num_classes
    loss = region_contrast_loss(queries, query_labels, bank_keys, bank_valid, tau)
    reference_queries = queries.detach().double().requires_grad_(True)
    expected = brute_bank_loss(reference_queries, query_labels, bank_keys, bank_valid, tau)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, atol=1e-4 * 0.01 / tau, rtol=1e-5)
    (grad,) = torch.autograd.grad(loss, queries)
    (expected_grad,) = torch.autograd.grad(expected, reference_queries)
    torch.testing.assert_close(grad.double(), expected_grad, atol=1e-5 / tau, rtol=1e-4)


def test_region_loss_by_hand():
    # q=(1,0) with positive (2,0) and negative (0,3), tau=1: -log(e / (e + 1)) = log(1 + 1/e)
    bank_keys = torch.tensor([[[2.0, 0.0]], [[0.0, 3.0]]])
    query = torch.tensor([[5.0, 0.0]])
    loss = region_contrast_loss(query, torch.tensor([0]), bank_keys, all_valid(2, 1), 1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_queries_without_positives_are_left_out_of_the_mean():
    bank_keys, bank_valid = random_bank(0, 3, 4, 5, fill=1.0)
    bank_valid[2] = False
    queries = torch.randn(4, 5, generator=seeded(1))
    labels = torch.tensor([0, 1, 2, 2])
    both = region_contrast_loss(queries, labels, bank_keys, bank_valid, 0.2)
    first_two = region_contrast_loss(queries[:2], labels[:2], bank_keys, bank_valid, 0.2)
    torch.testing.assert_close(both, first_two)


def test_no_positive_anywhere_gives_a_zero_with_a_graph():
    queries = torch.randn(3, 4, requires_grad=True)
    for bank_keys, bank_valid in [random_bank(0, 3, 0, 4), (torch.randn(3, 2, 4), ~all_valid(3, 2))]:
        loss = region_contrast_loss(queries, torch.tensor([0, 1, 2]), bank_keys, bank_valid, 0.1)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.equal(queries.grad, torch.zeros(3, 4))


def test_no_negatives_gives_zero_loss_and_finite_gradient():
    bank_keys, bank_valid = random_bank(0, 2, 3, 4, fill=1.0)
    bank_valid[1] = False
    queries = torch.randn(2, 4, requires_grad=True)
    loss = region_contrast_loss(queries, torch.tensor([0, 0]), bank_keys, bank_valid, 0.07)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(queries.grad).all()


def test_tiny_tau_is_stable_at_the_extremes():
    # A query opposite to its positive and on top of a negative: loss = (1 - (-1)) / tau = 200.
    bank_keys = torch.tensor([[[-1.0, 0.0]], [[1.0, 0.0]]])
    queries = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss = region_contrast_loss(queries, torch.tensor([0]), bank_keys, all_valid(2, 1), 0.01)
    loss.backward()
    assert loss.item() == pytest.approx(200.0, rel=1e-6)
    assert torch.isfinite(queries.grad).all()


def test_loss_under_bf16_autocast_is_fp32_and_matches():
    bank_keys, bank_valid = random_bank(3, 4, 5, 16, fill=0.8)
    projection = torch.nn.Linear(8, 16)
    inputs = torch.randn(6, 8, generator=seeded(4))
    labels = torch.arange(6) % 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        queries = projection(inputs)
        loss = region_contrast_loss(queries, labels, bank_keys.bfloat16(), bank_valid, 0.1)
    assert queries.dtype == torch.bfloat16 and loss.dtype == torch.float32
    same_inputs = region_contrast_loss(queries.float(), labels, bank_keys.bfloat16().float(), bank_valid, 0.1)
    torch.testing.assert_close(loss, same_inputs, atol=1e-6, rtol=1e-6)
    full_precision = region_contrast_loss(projection(inputs), labels, bank_keys, bank_valid, 0.1)
    torch.testing.assert_close(loss, full_precision, atol=5e-2, rtol=2e-2)


def test_region_centers_under_bf16_autocast_are_fp32():
    features, logits, labels = random_segmentation(0, 2, 3, 4, 4, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        centers, valid = region_centers(features.bfloat16(), logits.bfloat16(), labels, 3, "weighted")
    rounded = features.bfloat16().float(), logits.bfloat16().float()
    expected, _ = region_centers(*rounded, labels, 3, "weighted")
    assert centers.dtype == torch.float32
    torch.testing.assert_close(centers, expected)


# ---------------------------------------------------------------------------
# In-batch contrast (bank size 0)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query_images", "images"),
    [
        (None, [0, 1, 2, 3]),
        (slice(1, 3), [1, 2]),
        (torch.tensor([3, 0]), [0, 3]),
        (torch.tensor([False, True, False, False]), [1]),
    ],
)
def test_in_batch_loss_matches_brute_force(query_images, images):
    features, logits, labels = random_segmentation(7, 4, 6, 4, 4, 5, 4)
    features.requires_grad_(True)
    centers, valid = region_centers(features, logits, labels, 5, "weighted")
    loss = in_batch_contrast_loss(centers, valid, 0.1, query_images)
    reference = centers.detach().double().requires_grad_(True)
    expected = brute_in_batch(reference, valid, 0.1, images)
    torch.testing.assert_close(loss.double(), expected, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(loss, centers)
    (expected_grad,) = torch.autograd.grad(expected, reference)
    torch.testing.assert_close(grad.double(), expected_grad, atol=1e-5, rtol=1e-4)


def test_in_batch_query_is_not_its_own_positive():
    # One center per class and image 0 only: no other center of its class, so nothing to pull.
    centers = torch.randn(1, 3, 4, requires_grad=True)
    loss = in_batch_contrast_loss(centers, all_valid(1, 3), 0.1)
    assert loss.item() == 0.0 and loss.requires_grad


def test_size_zero_bank_is_empty_and_the_engine_falls_back_to_in_batch():
    bank = RegionBank(3, 0, 4)
    bank.push(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
    assert bank.keys.shape == (3, 0, 4) and bank.valid.shape == (3, 0)
    assert bank.nbytes() == region_bank_bytes(3, 0, 4)
    centers = torch.randn(2, 3, 4)
    valid = all_valid(2, 3)
    queries, labels, present = region_entries(centers, valid)
    assert region_contrast_loss(queries, labels, bank.keys, bank.valid, 0.1, query_valid=present).item() == 0.0
    expected = brute_in_batch(centers, valid, 0.1, [0, 1])
    assert in_batch_contrast_loss(centers, valid, 0.1).item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------------------
# Region bank
# ---------------------------------------------------------------------------


def directions(angles, scale=3.0):
    """Unnormalised 2-D vectors at the given angles (in radians), so each entry is identifiable."""
    angles = torch.tensor(angles, dtype=torch.float32)
    return scale * torch.stack([angles.cos(), angles.sin()], 1)


def test_bank_fifo_wraps_and_keeps_the_last_entries():
    bank = RegionBank(2, 3, 2)
    bank.push(directions([0.0, 0.1, 0.2, 0.3, 0.4]), torch.zeros(5, dtype=torch.long))
    # 5 entries into 3 slots: t=2,3,4 survive in slots 2,0,1; the pointer moved 5 places.
    torch.testing.assert_close(bank.keys[0], directions([0.3, 0.4, 0.2], scale=1.0))
    assert bank.ptr.tolist() == [2, 0] and bank.valid.tolist() == [[True] * 3, [False] * 3]
    bank.push(directions([0.5]), torch.tensor([0]))  # overwrites the oldest, t=2
    torch.testing.assert_close(bank.keys[0], directions([0.3, 0.4, 0.5], scale=1.0))
    assert bank.ptr.tolist() == [0, 0]


def test_one_push_equals_pushing_one_at_a_time():
    generator = seeded(0)
    entries = torch.randn(23, 4, generator=generator)
    labels = torch.randint(0, 3, (23,), generator=generator)
    together, one_by_one = RegionBank(3, 4, 4), RegionBank(3, 4, 4)
    together.push(entries, labels)
    for entry, label in zip(entries, labels):
        one_by_one.push(entry[None], label[None])
    for name in ["keys", "ptr", "filled"]:
        assert torch.equal(getattr(together, name), getattr(one_by_one, name))


def test_bank_classes_are_independent():
    bank = RegionBank(3, 4, 2)
    bank.push(directions([0.0, 0.1]), torch.tensor([0, 0]))
    before = bank.keys[0].clone()
    bank.push(directions([1.0, 1.1, 1.2, 1.3, 1.4]), torch.tensor([1, 1, 2, 1, 1]))
    assert torch.equal(bank.keys[0], before)
    assert bank.ptr.tolist() == [2, 0, 1] and bank.filled.tolist() == [2, 4, 1]
    torch.testing.assert_close(bank.keys[2, 0], directions([1.2], scale=1.0)[0])


def test_bank_keys_are_normalised_and_detached():
    bank = RegionBank(2, 3, 5)
    centers = torch.randn(4, 5, requires_grad=True)
    bank.push(centers * 7, torch.tensor([0, 1, 0, 1]))
    assert not bank.keys.requires_grad
    torch.testing.assert_close(bank.keys[bank.valid].norm(dim=1), torch.ones(4))
    loss = region_contrast_loss(centers, torch.tensor([0, 1, 0, 1]), bank.keys, bank.valid, 0.1)
    loss.backward()
    assert centers.grad is not None and all(buffer.grad is None for buffer in bank.buffers())


def test_bank_state_dict_round_trip_resumes_identically():
    bank = RegionBank(3, 4, 5, dtype=torch.bfloat16)
    bank.push(torch.randn(9, 5), torch.tensor([0, 1, 2, 0, 0, 0, 0, 1, 2]))
    restored = RegionBank(3, 4, 5, dtype=torch.bfloat16)
    restored.load_state_dict(bank.state_dict())
    more = torch.randn(3, 5), torch.tensor([2, 2, 0])
    bank.push(*more)
    restored.push(*more)
    assert set(bank.state_dict()) == {"slots", "ptr", "filled"}
    for name in ["keys", "ptr", "filled", "valid"]:
        assert torch.equal(getattr(bank, name), getattr(restored, name))


# ---------------------------------------------------------------------------
# Pixel banks
# ---------------------------------------------------------------------------


def constant_image(vector, label, size=6):
    """One image whose every pixel has feature `vector` and class `label`."""
    features = torch.tensor(vector).reshape(1, -1, 1, 1).expand(-1, -1, size, size)  # [C] -> [1,C,H,W]
    return features, torch.full((1, size, size), label)


def test_pixel_bank_pointer_advances_by_the_number_written_and_wraps_at_the_head():
    bank = PixelBank(2, memory_size=25, dim=2, pixel_update_freq=10)
    pushes = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
    for vector in pushes:
        bank.push(*constant_image(vector, 0))
    # Push 1 -> slots 0-9, push 2 -> 10-19, push 3 -> 20-24 then 0-4: the tail 10-19 survives.
    expected_slot_owner = [2] * 5 + [0] * 5 + [1] * 10 + [2] * 5
    assert torch.equal(bank.pixels.keys[0], torch.tensor([pushes[i] for i in expected_slot_owner]))
    assert bank.pixels.ptr.tolist() == [5, 0] and bank.pixels.filled.tolist() == [25, 0]
    assert bank.segments.ptr.tolist() == [3, 0]  # one mean per class per image
    assert torch.equal(bank.segments.keys[0, :3], torch.tensor(pushes))


def test_pixel_bank_samples_distinct_pixels_of_the_right_class():
    features = torch.randn(2, 4, 5, 5, generator=seeded(0))
    labels = torch.tensor([0, 1, IGNORE, 2, 0])[torch.arange(50) % 5].reshape(2, 5, 5)  # [BHW] -> [B,H,W]
    labels[1, :, :] = 0
    labels[1, 0, 0] = 1  # a class with a single pixel in image 1
    bank = PixelBank(4, memory_size=100, dim=4, pixel_update_freq=3)
    bank.push(features, labels, generator=seeded(1))
    pixels = F.normalize(features.flatten(2).transpose(1, 2).reshape(-1, 4), dim=1)  # [B,C,H,W] -> [BHW,C]
    flat_labels = labels.flatten()
    # class 0: 3 from image 0 + 3 from image 1; class 1: 3 + 1; class 2: 3 + 0; class 3 absent
    assert bank.pixels.filled.tolist() == [6, 4, 3, 0]
    assert bank.segments.filled.tolist() == [2, 2, 1, 0]
    for label in range(3):
        stored = bank.pixels.keys[label, : bank.pixels.filled[label]]
        matches = (stored[:, None] - pixels[None]).abs().amax(2) < 1e-6  # [S,BHW]
        assert (matches.sum(1) == 1).all() and matches.any(0).sum() == len(stored)  # real and distinct
        assert (flat_labels[matches.nonzero()[:, 1]] == label).all()


def test_pixel_bank_push_is_deterministic_for_a_seed():
    features, _, labels = random_segmentation(2, 2, 3, 6, 6, 4, 4)
    banks = [PixelBank(4, memory_size=30, dim=3, pixel_update_freq=4) for _ in range(2)]
    for bank in banks:
        bank.push(features, labels, generator=seeded(5))
    assert torch.equal(banks[0].pixels.keys, banks[1].pixels.keys)


def test_all_pixel_bank_overwrites_an_image_slot_on_revisit():
    bank = AllPixelBank(num_images=3, height=2, width=2, dim=2)
    first, _ = constant_image([1.0, 0.0], 0, size=2)
    second, _ = constant_image([0.0, 2.0], 0, size=2)
    labels = torch.tensor([[[0, 1], [IGNORE, 1]]])
    bank.push(first, labels, torch.tensor([1]))
    bank.push(second, labels, torch.tensor([1]))
    keys, key_labels, valid = bank.entries()
    assert valid.tolist() == [False] * 4 + [True, True, False, True] + [False] * 4
    assert key_labels[4:8].tolist() == [0, 1, 255, 1]
    assert torch.equal(keys[4:8], torch.tensor([[0.0, 1.0]] * 4))


def anchor_scene():
    """One image [1,C,6,10]: class 0 has 20 easy + 20 hard pixels, class 1 2 hard + 14 easy, class 2 2 + 2.

    Each pixel's feature is its flat index, so a sampled anchor names its pixel.
    """
    labels = torch.tensor([0] * 40 + [1] * 16 + [2] * 4)
    predictions = labels.clone()
    predictions[20:40] = 3
    predictions[40:42] = 0
    predictions[56:58] = 1
    features = torch.arange(60.0).reshape(1, 1, 6, 10).expand(1, 2, 6, 10)  # [HW] -> [B,C,H,W]
    return features, labels.reshape(1, 6, 10), predictions.reshape(1, 6, 10)  # [HW] -> [B,H,W]


def sampled_pixels(anchors, anchor_labels):
    """The flat pixel index [S] of each real anchor of an index-featured scene, and the padding's count."""
    real = anchor_labels != IGNORE
    padding = ~real
    assert not (real[1:] & padding[:-1]).any(), "padding slots come after every anchor"
    return anchors[real, 0].long(), int(padding.sum())


@pytest.mark.parametrize(
    ("max_samples", "max_views", "expected"),
    [
        # views 10: class 0 5 easy + 5 hard; class 1 2 hard + 8 easy; class 2 all 4
        (1024, 10, {(0, 0): 5, (0, 1): 5, (1, 0): 8, (1, 1): 2, (2, 0): 2, (2, 1): 2}),
        # max_samples 12 over 3 classes caps views at 4: two of each where possible
        (12, 100, {(0, 0): 2, (0, 1): 2, (1, 0): 2, (1, 1): 2, (2, 0): 2, (2, 1): 2}),
        # views 3: hard gets 3 // 2 = 1, easy fills the rest
        (1024, 3, {(0, 0): 2, (0, 1): 1, (1, 0): 2, (1, 1): 1, (2, 0): 2, (2, 1): 1}),
        # max_samples 2 over 3 classes: views 0, nothing at all
        (2, 100, {}),
    ],
)
def test_anchor_sampling_quotas(max_samples, max_views, expected):
    features, labels, predictions = anchor_scene()
    anchors, anchor_labels = sample_anchors(features, labels, predictions, max_samples, max_views, seeded(0))
    assert anchors.shape == (min(max_samples, 60), 2) and anchor_labels.shape == (min(max_samples, 60),)
    index, padding = sampled_pixels(anchors, anchor_labels)
    assert len(index.unique()) == len(index) == min(max_samples, 60) - padding
    assert torch.equal(anchor_labels[: len(index)], labels.flatten()[index])
    hard = (predictions.flatten()[index] != labels.flatten()[index]).long()
    # Pair-major, easy before hard: the (class, hard) keys never decrease.
    keys = (labels.flatten()[index] * 2 + hard).tolist()
    assert keys == sorted(keys)
    found = {}
    for label, is_hard in zip(labels.flatten()[index].tolist(), hard.tolist()):
        found[(label, is_hard)] = found.get((label, is_hard), 0) + 1
    assert found == expected


def test_anchor_sampling_skips_ignored_pixels_and_handles_an_empty_batch():
    features, labels, predictions = anchor_scene()
    labels[0, :3] = IGNORE
    anchors, anchor_labels = sample_anchors(features, labels, predictions, 1024, 100)
    index, padding = sampled_pixels(anchors, anchor_labels)
    assert anchors.shape == (60, 2) and len(index) == 60 - 30 and padding == 30
    assert (labels.flatten()[index] != IGNORE).all()
    empty, empty_labels = sample_anchors(features, torch.full_like(labels, IGNORE), predictions)
    assert empty.shape == (60, 2) and (empty_labels == IGNORE).all()


def test_anchor_sampling_is_fixed_by_the_generator_state():
    features, _, labels = random_segmentation(5, 3, 4, 7, 7, 5, 5)
    predictions = torch.randint(0, 5, labels.shape, generator=seeded(6))
    draws = [sample_anchors(features, labels, predictions, 40, 6, seeded(seed)) for seed in (1, 1, 2)]
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert not torch.equal(draws[0][0], draws[2][0])


# The sampler before it took fixed shapes (PR for issue 20): it asks the host for the labelled pixels
# (nonzero), the image-class pairs (unique) and their sizes (bincount). Kept as the reference the
# fixed-shape sampler must match in distribution; only the exact draws differ.
def host_sample_anchors(labels, predictions, max_samples, max_views, generator):
    """The old sampler's chosen flat pixel indices [A], pair-major."""
    flat_labels = labels.flatten().long()
    images = torch.arange(labels.shape[0]).repeat_interleave(labels[0].numel())
    kept = (flat_labels != IGNORE).nonzero()[:, 0]
    pairs, pair_of = torch.unique(torch.stack([images[kept], flat_labels[kept]], 1), dim=0, return_inverse=True)
    views = min(max_views, max_samples // max(len(pairs), 1))
    hard = (predictions.flatten()[kept] != flat_labels[kept]).long()
    groups = pair_of * 2 + hard
    easy_count, hard_count = torch.bincount(groups, minlength=2 * len(pairs)).reshape(-1, 2).unbind(1)
    take_hard = torch.minimum(hard_count, torch.clamp(views - easy_count, min=views // 2))
    quotas = torch.stack([torch.minimum(easy_count, views - take_hard), take_hard], 1).flatten()
    noise = torch.rand(groups.shape, generator=generator)
    order = noise.argsort()
    order = order[groups[order].argsort(stable=True)]
    rank = torch.arange(len(groups)) - torch.searchsorted(groups[order], groups[order])
    return kept[order[rank < quotas[groups[order]]]]


def host_class_pixels(labels, per_class, num_classes, generator):
    """The old bank push's chosen flat pixel indices [S]: up to per_class per image and class, image-major."""
    flat_labels = labels.flatten().long()
    images = torch.arange(labels.shape[0]).repeat_interleave(labels[0].numel())
    kept = (flat_labels != IGNORE).nonzero()[:, 0]
    groups = images[kept] * num_classes + flat_labels[kept]
    noise = torch.rand(groups.shape, generator=generator)
    order = noise.argsort()
    order = order[groups[order].argsort(stable=True)]
    rank = torch.arange(len(groups)) - torch.searchsorted(groups[order], groups[order])
    return kept[order[rank < per_class]]


def sampling_scene():
    """Two 6x6 images of 4 classes (class 3 only in image 1), a fifth of the pixels ignored, random predictions.

    Small groups, so that max_views, the hard / easy split and the max_samples cap all bind.
    """
    generator = seeded(21)
    labels = torch.randint(0, 3, (2, 6, 6), generator=generator)
    labels[1, :2, :2] = 3
    labels[torch.rand(2, 6, 6, generator=generator) < 0.2] = IGNORE
    predictions = torch.randint(0, 4, (2, 6, 6), generator=generator)
    features = torch.arange(72.0).reshape(2, 1, 6, 6)  # [BHW] -> [B,C,H,W]: a pixel's feature is its index
    return features, labels, predictions


def selection_frequencies(draw, draws):
    """How often each of the scene's 72 pixels is chosen over `draws` calls of draw(seed) -> flat indices."""
    counts = torch.zeros(72)
    for seed in range(draws):
        counts += torch.bincount(draw(seed), minlength=72)
    return counts / draws


def assert_frequencies(found, expected, draws):
    """Each pixel's selection frequency within 5 binomial standard deviations of its probability."""
    tolerance = 5 * (expected * (1 - expected) / draws).sqrt() + 1e-9
    assert ((found - expected).abs() <= tolerance).all(), (found - expected).abs().max()


# Views bind (one kind short in some pairs); the cap binds; views 1 (easy first).
@pytest.mark.parametrize(("max_samples", "max_views"), [(1024, 4), (20, 100), (1024, 1)])
def test_anchor_sampling_matches_the_host_sampler_in_distribution(max_samples, max_views):
    features, labels, predictions = sampling_scene()
    flat_labels, flat_predictions = labels.flatten(), predictions.flatten()
    images = torch.arange(72) // 36
    old_seeds, draws = 10_000, 1000

    def new(seed):
        return sampled_pixels(*sample_anchors(features, labels, predictions, max_samples, max_views, seeded(seed)))[0]

    def old(seed):
        return host_sample_anchors(labels, predictions, max_samples, max_views, seeded(old_seeds + seed))

    # Same anchors per (image, class, easy / hard) in every draw: the quotas depend on the data only.
    group = images * 2 * 256 + flat_labels * 2 + (flat_predictions != flat_labels).long()
    assert torch.equal(group[new(0)], group[old(0)])  # pair-major, easy before hard, both
    # Each pixel is chosen with probability quota / size of its (image, class, easy / hard) group.
    chosen_count = torch.bincount(group[old(0)], minlength=int(group.max()) + 1)
    group_size = torch.bincount(group[flat_labels != IGNORE], minlength=int(group.max()) + 1)
    expected = torch.where(flat_labels != IGNORE, chosen_count[group] / group_size[group].clamp_min(1), 0.0)
    assert_frequencies(selection_frequencies(new, draws), expected, draws)
    assert_frequencies(selection_frequencies(old, draws), expected, draws)


def test_anchor_sampling_draws_every_subset_of_a_group_alike():
    # Two pairs, views min(2, 4 // 2): both pixels of class 0, then 2 of class 2's 4 (all easy).
    labels = torch.tensor([[[2, 2, 2, 2, 0, 0]]])
    features = torch.arange(6.0).reshape(1, 1, 1, 6)  # [W] -> [B,C,H,W]
    draws = 1200
    subsets = {}
    for seed in range(draws):
        index, _ = sampled_pixels(*sample_anchors(features, labels, labels, 4, 2, seeded(seed)))
        assert sorted(index[:2].tolist()) == [4, 5]
        subset = tuple(sorted(index[2:].tolist()))
        subsets[subset] = subsets.get(subset, 0) + 1
    assert len(subsets) == 6  # 4 choose 2
    # Chi-square with 5 degrees of freedom: 20.5 is its 0.999 quantile.
    assert sum((count - draws / 6) ** 2 / (draws / 6) for count in subsets.values()) < 20.5


def test_bank_push_samples_like_the_host_sampler():
    _, labels, _ = sampling_scene()
    flat_labels = labels.flatten()
    # Pixel i's feature points at angle 0.04 i (under pi for all 72): normalised keys still name their pixel.
    angles = 0.04 * torch.arange(72.0)
    features = torch.stack([angles.cos(), angles.sin()]).reshape(2, 2, 36).transpose(0, 1).reshape(2, 2, 6, 6)
    draws, per_class = 1000, 3

    def pushed(seed):
        """The pixels a push enqueues, in queue order: by class, and inside a class as pushed."""
        bank = PixelBank(4, memory_size=100, dim=2, pixel_update_freq=per_class)
        bank.push(features, labels, generator=seeded(seed))
        keys = torch.cat([bank.pixels.keys[n, : bank.pixels.filled[n]] for n in range(4)])
        return (torch.atan2(keys[:, 1], keys[:, 0]) / 0.04).round().long()

    def old(seed):
        chosen = host_class_pixels(labels, per_class, 4, seeded(10_000 + seed))
        return chosen[flat_labels[chosen].argsort(stable=True)]  # in queue order

    def new(seed):
        sample = class_pixels(labels, per_class, 4, seeded(seed))
        return sample.pixels[sample.valid]

    group = (torch.arange(72) // 36) * 256 + flat_labels  # (image, class)
    assert torch.equal(group[pushed(0)], group[old(0)])  # per class, image 0's pixels before image 1's
    assert torch.equal(pushed(1), new(1)[flat_labels[new(1)].argsort(stable=True)])
    assert (flat_labels[pushed(0)] != IGNORE).all()
    group_size = torch.bincount(group[flat_labels != IGNORE], minlength=512)
    expected = torch.where(flat_labels != IGNORE, group_size[group].clamp_max(per_class) / group_size[group], 0.0)
    assert_frequencies(selection_frequencies(new, draws), expected, draws)
    assert_frequencies(selection_frequencies(old, draws), expected, draws)


@pytest.mark.parametrize("bank_kind", ["pixel", "all_pixel"])
def test_pixel_contrast_loss_matches_brute_force(bank_kind):
    features, logits, labels = random_segmentation(11, 2, 4, 6, 6, 3, 3)
    features.requires_grad_(True)
    predictions = logits.argmax(1)
    if bank_kind == "pixel":
        bank = PixelBank(3, memory_size=7, dim=4, pixel_update_freq=2)
        bank.push(features, labels, generator=seeded(0))
    else:
        bank = AllPixelBank(num_images=4, height=6, width=6, dim=4)
        bank.push(features, labels, torch.tensor([0, 2]))
    loss = pixel_contrast_loss(features, labels, predictions, bank, 0.1, 30, 4, seeded(3))
    anchors, anchor_labels = sample_anchors(features, labels, predictions, 30, 4, seeded(3))
    real = anchor_labels != IGNORE
    assert 0 < real.sum() < len(real)  # padding slots present, and left out below
    keys, key_labels, valid = bank.entries()
    usable = [valid.tolist()] * int(real.sum())
    expected = brute_info_nce(anchors[real], anchor_labels[real].tolist(), keys, key_labels.tolist(), usable, 0.1)
    dense = dense_info_nce(anchors[real], anchor_labels[real], keys, key_labels, valid[None], 0.1)
    torch.testing.assert_close(loss.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss.double(), dense, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(loss, features)
    (expected_grad,) = torch.autograd.grad(dense, features)
    torch.testing.assert_close(grad, expected_grad.float(), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------
# Cost model
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cost_model_equals_bank_storage(dtype):
    assert RegionBank(5, 7, 3, dtype).nbytes() == region_bank_bytes(5, 7, 3, dtype)
    assert PixelBank(4, 9, 6, dtype=dtype).nbytes() == pixel_bank_bytes(4, 9, 6, dtype)
    assert AllPixelBank(3, 4, 5, 6, dtype).nbytes() == all_pixel_bank_bytes(3, 4, 5, 6, dtype)


def test_cost_model_cityscapes_figures():
    assert round(region_bank_bytes(19, 2975, 256) / 1e6, 1) == 57.9
    assert round(pixel_bank_bytes(19, 5000, 256) / 1e6, 1) == 194.6
    # 2975 x 97 x 97 x 256 x 4 B of keys = 28.66 GB (quoted truncated as 28.6), plus a label byte per pixel.
    assert 28.6e9 < all_pixel_bank_bytes(2975, 97, 97, 256) < 28.7e9
    assert region_bank_bytes(19, 2975, 256, torch.bfloat16) < region_bank_bytes(19, 2975, 256) / 1.99
