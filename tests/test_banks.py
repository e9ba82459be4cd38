"""Bank memory profile: predictions from the cost model, measurements against them, CLI outputs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from PIL import Image

from benchmarks import bank_profile as banks
from harness.contrast import all_pixel_bank_bytes, pixel_bank_bytes, region_bank_bytes

CPU = torch.device("cpu")
# Fits every digit-scenes bank (at most 112.6 MB) but only the region bank's loss.
SMALL_LIMIT = 150 * banks.MB


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One CLI run on the digit-scenes geometry: its rows and output folder."""
    out = tmp_path_factory.mktemp("banks")
    argv = ["--out", str(out), "--max-bytes", str(SMALL_LIMIT), "--datasets", "digit_scenes", "--device", "cpu"]
    return banks.main(argv), out


def by_kind(rows):
    """Rows keyed by bank kind."""
    return {row.kind: row for row in rows}


def test_cityscapes_predictions_are_the_cost_model():
    cityscapes = banks.GEOMETRIES["cityscapes"]
    rows = by_kind([banks.profile_row(kind, cityscapes, CPU, max_bytes=0) for kind in banks.KINDS])
    assert rows["region"].predicted_bytes == region_bank_bytes(19, 2975, 256)
    assert rows["pixel"].predicted_bytes == pixel_bank_bytes(19, 5000, 256)
    assert rows["all_pixel"].predicted_bytes == all_pixel_bank_bytes(2975, 97, 97, 256)
    cells = banks.table_cells(list(rows.values())).set_index("bank")["predicted"]
    assert cells["region bank"] == "57.9 MB"
    assert cells["pixel + segment queues"] == "194.6 MB"
    assert 28.6 * banks.GB <= rows["all_pixel"].predicted_bytes <= 28.7 * banks.GB


def test_feature_side_is_crop_over_stride_rounded_up():
    sides = {name: geometry.side for name, geometry in banks.GEOMETRIES.items()}
    assert sides == {"cityscapes": 97, "ade20k": 64, "coco_stuff": 65, "digit_scenes": 8}


def test_all_pixel_crossing_of_80_gb():
    cityscapes = banks.GEOMETRIES["cityscapes"]
    crossing = banks.crossing_images(banks.ALL_PIXELS, cityscapes)
    per_image = 97 * 97 * (256 * 4 + 1)  # one fp32 key and one uint8 label per feature pixel
    assert crossing == 80 * 10**9 // per_image + 1 == 8296
    assert banks.ALL_PIXELS.predicted_bytes(cityscapes.with_images(crossing - 1)) <= banks.GPU_BYTES
    assert banks.ALL_PIXELS.predicted_bytes(cityscapes.with_images(crossing)) > banks.GPU_BYTES


def test_fixed_size_queues_never_cross_and_small_limits_cross_at_once():
    cityscapes = banks.GEOMETRIES["cityscapes"]
    assert banks.crossing_images(banks.PIXEL_QUEUES, cityscapes) is None
    assert banks.crossing_images(banks.REGION, cityscapes, limit=0) == 1
    region_crossing = banks.crossing_images(banks.REGION, cityscapes)
    assert region_crossing == (80 * 10**9 - 2 * 19 * 8) // (19 * 256 * 4) + 1


def test_banks_over_the_limit_are_predicted_but_not_built():
    ade20k = banks.GEOMETRIES["ade20k"]
    row = banks.profile_row(banks.ALL_PIXELS, ade20k, CPU, max_bytes=10**9)
    assert row.predicted_bytes == all_pixel_bank_bytes(20210, 64, 64, 256)
    assert not row.fits_80gb_gpu
    assert (row.buffer_bytes, row.peak_bytes, row.update_ms, row.loss_ms) == (None, None, None, None)


def test_synthetic_labels_hold_a_few_classes_per_image():
    geometry = banks.GEOMETRIES["ade20k"]
    labels = banks.synthetic_labels(geometry, torch.Generator().manual_seed(0))
    assert labels.shape == (banks.BATCH_IMAGES, 64, 64)
    assert all(len(image.unique()) == banks.REGIONS_PER_IMAGE for image in labels)
    assert labels.max() < geometry.num_classes


def test_measured_digit_scenes_banks_match_the_prediction(cli_run):
    rows, _ = cli_run
    assert [row.kind for row in rows] == [kind.name for kind in banks.KINDS]
    for row in rows:
        assert row.buffer_bytes == row.predicted_bytes
        assert row.peak_bytes == pytest.approx(row.predicted_bytes, rel=0.02)
        assert row.update_ms > 0


def test_loss_is_timed_only_where_its_memory_fits(cli_run):
    rows = by_kind(cli_run[0])
    region = rows["region"]
    assert 0 < region.loss_queries <= banks.BATCH_IMAGES * banks.REGIONS_PER_IMAGE
    assert region.loss_ms > 0
    assert 0 < region.loss_peak_bytes <= banks.loss_bytes_bound(banks.REGION, banks.GEOMETRIES["digit_scenes"])
    assert rows["pixel"].loss_ms is None and rows["all_pixel"].loss_ms is None


def test_cli_writes_table_csv_and_plot(cli_run):
    rows, out = cli_run
    table = (out / "banks.md").read_text()
    assert "| digit_scenes | region bank | 11,000 | 11.3 MB | 11.3 MB |" in table
    assert "not measured (does not fit)" in table
    frame = pd.read_csv(out / "banks.csv")
    assert list(frame["predicted_bytes"]) == [row.predicted_bytes for row in rows]
    assert list(frame["peak_bytes"]) == [row.peak_bytes for row in rows]
    with Image.open(out / "bank_memory.png") as image:
        assert image.format == "PNG"
        image.verify()
        assert min(image.size) > 400


def test_unknown_dataset_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="mnist"):
        banks.main(["--out", str(tmp_path), "--datasets", "cityscapes,mnist"])
