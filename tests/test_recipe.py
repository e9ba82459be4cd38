"""Recipe schema: loading, overrides, sweep expansion and the errors a user meets."""

from pathlib import Path

import pytest
import yaml

from harness.recipe import (
    RecipeError,
    changed_keys,
    disallowed_changes,
    fingerprint,
    load,
    load_sweep,
    parse_override,
    validate,
    with_batch_plan,
)

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))


def write_recipe(tmp_path: Path, tree: dict, name: str = "demo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def test_defaults_follow_the_paper(tmp_path: Path) -> None:
    (variant,) = load(write_recipe(tmp_path, {}))
    recipe = variant.recipe
    assert variant.name == "default"
    assert recipe.run.name == "demo"  # the file's stem
    assert recipe.model.output_stride == 8 and recipe.model.head == "deeplabv3"
    assert recipe.loss.aux_weight == 0.4 and recipe.loss.contrast.weight == 0.1
    assert recipe.optim.poly_power == 0.9 and recipe.optim.momentum == 0.9


def test_overrides_are_typed_and_repeatable(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, {"optim": {"iterations": 50}})
    (variant,) = load(path, ["optim.iterations=7", "model.backbone=resnet18", "loss.contrast.kind=region"])
    assert variant.recipe.optim.iterations == 7
    assert variant.recipe.model.backbone == "resnet18"
    assert variant.recipe.loss.contrast.kind == "region"


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("a.b=8") == ("a.b", 8)
    assert parse_override("eval.scales=[0.5, 1.0]") == ("eval.scales", [0.5, 1.0])
    with pytest.raises(RecipeError, match="dotted.key=value"):
        parse_override("no-equals-sign")


def test_sweep_grid_and_named_variants(tmp_path: Path) -> None:
    tree = {
        "loss": {"contrast": {"kind": "region"}},
        "sweep": {
            "grid": {"loss.contrast.variant": ["average", "weighted"], "loss.contrast.bank_size": [0, 100]},
            "variants": {"ce": {"loss.contrast.kind": "none"}},
            "paper": {"ce": {"table": "Table 2", "row": "CE Baseline", "miou": 76.4}},
        },
    }
    variants = load(write_recipe(tmp_path, tree))
    names = [variant.name for variant in variants]
    assert names == [
        "variant-average_bank_size-0", "variant-average_bank_size-100",
        "variant-weighted_bank_size-0", "variant-weighted_bank_size-100", "ce",
    ]
    by_name = {variant.name: variant.recipe for variant in variants}
    assert by_name["variant-weighted_bank_size-100"].loss.contrast.bank_size == 100
    assert by_name["ce"].loss.contrast.kind == "none"
    assert by_name["ce"].paper.miou == 76.4
    assert by_name["variant-average_bank_size-0"].paper is None


def test_override_applies_to_every_variant(tmp_path: Path) -> None:
    tree = {"sweep": {"grid": {"loss.contrast.kind": ["none", "region"]}}}
    variants = load(write_recipe(tmp_path, tree), ["optim.iterations=3"])
    assert [variant.recipe.optim.iterations for variant in variants] == [3, 3]


@pytest.mark.parametrize(
    ("tree", "overrides", "key"),
    [
        ({"model": {"backbon": "resnet50"}}, [], "model.backbon"),
        ({"optim": {"iterations": "many"}}, [], "optim.iterations"),
        ({"model": {"output_stride": 12}}, [], "model.output_stride"),
        ({"model": {"head": "unet"}}, [], "model.head"),
        ({}, ["data.batch_size=0"], "data.batch_size"),
        ({"sweep": {"grid": {"loss.contrast.tau": [0.1, -1.0]}}}, [], "loss.contrast.tau"),
        ({"sweep": {"grid": {"loss.contrast.kind": []}}}, [], "sweep.grid.loss.contrast.kind"),
        ({"sweep": {"variants": {"x": {}}, "paper": {"y": {"table": "T", "row": "r", "miou": 1}}}}, [], "sweep.paper.y"),
        ({"eval": {"mode": "slide"}}, [], "eval"),
        ({"eval": {"base_size": [512, 2048]}}, [], "eval.base_size"),
        ({"data": {"augment": {"base_size": [512, 2048]}}}, [], "data.augment.base_size"),
        ({"data": {"digit_scenes": {"digits_per_image": [3, 2]}}}, [], "data.digit_scenes.digits_per_image"),
        ({"data": {"digit_scenes": {"digit_scale": [0.5, 1.5]}}}, [], "data.digit_scenes.digit_scale"),
        ({}, ["optim.name=adam"], "optim.name"),
    ],
)
def test_bad_recipes_name_the_file_and_the_key(tmp_path: Path, tree: dict, overrides: list, key: str) -> None:
    path = write_recipe(tmp_path, tree)
    with pytest.raises(RecipeError) as caught:
        load(path, overrides)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{path}: {key}: ")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="not found"):
        load(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load(bad)


def test_recipes_are_shipped() -> None:
    names = {path.stem for path in RECIPES}
    assert "quickstart" in names and len(RECIPES) >= 4


@pytest.mark.parametrize("path", RECIPES, ids=[path.stem for path in RECIPES])
def test_every_shipped_recipe_loads(path: Path) -> None:
    variants = load(path)
    assert variants and len({(variant.name, variant.seed) for variant in variants}) == len(variants)
    for variant in variants:  # a model trained at a base scale is tested at it
        assert variant.recipe.eval.base_size == variant.recipe.data.augment.base_size, variant.name
        if variant.recipe.data.dataset != "digit_scenes":  # hours-long runs checkpoint by time and by iteration
            assert variant.recipe.run.checkpoint_minutes and variant.recipe.run.checkpoint_interval, variant.name


def test_a_fingerprint_covers_what_a_run_computes_not_where_it_writes() -> None:
    base = validate({})
    moved = validate({"run": {"output_dir": "elsewhere", "reports_dir": "there"}})
    assert fingerprint(moved) == fingerprint(base)
    changed = validate({"optim": {"lr": 0.02}, "eval": {"flip": True}})
    assert fingerprint(changed) != fingerprint(base)
    dumps = [recipe.model_dump(mode="json") for recipe in (base, changed)]
    assert changed_keys(*dumps) == ["eval.flip", "optim.lr"]
    assert disallowed_changes(["eval.flip", "optim.lr"], ["eval.*"]) == ["optim.lr"]
    with pytest.raises(RecipeError, match="optim.lr cannot change mid-run"):
        disallowed_changes([], ["optim.lr"])


def test_seeds_repeat_every_variant_with_its_run_seed(tmp_path: Path) -> None:
    tree = {"sweep": {"seeds": [3, 5], "variants": {"ce": {"loss.contrast.kind": "none"}, "region": {}}}}
    variants, sweep = load_sweep(write_recipe(tmp_path, tree))
    assert [(variant.name, variant.seed, variant.recipe.run.seed) for variant in variants] == [
        ("ce", 3, 3), ("ce", 5, 5), ("region", 3, 3), ("region", 5, 5)
    ]
    assert sweep.seeds == [3, 5] and sweep.baseline is None


def test_seeds_and_baseline_can_be_set_from_the_command_line(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, {"sweep": {"variants": {"ce": {"loss.contrast.kind": "none"}, "region": {}}}})
    variants, sweep = load_sweep(path, ["sweep.seeds=[0,1,2]", "sweep.baseline=ce"])
    assert len(variants) == 6 and sweep.seeds == [0, 1, 2] and sweep.baseline == "ce"
    (unseeded,) = load(write_recipe(tmp_path, {}, "plain.yaml"))
    assert unseeded.seed is None  # no seeds: one run, in the variant's own folder


@pytest.mark.parametrize(("sweep", "key"), [
    ({"seeds": [1, 1]}, "sweep.seeds"),
    ({"baseline": "nobody", "variants": {"ce": {}}}, "sweep.baseline"),
])
def test_bad_seeds_or_baseline_name_the_key(tmp_path: Path, sweep: dict, key: str) -> None:
    with pytest.raises(RecipeError) as caught:
        load(write_recipe(tmp_path, {"sweep": sweep}))
    assert caught.value.key == key


def test_digit_stand_in_needs_the_digit_scenes(tmp_path: Path) -> None:
    tree = {"data": {"dataset": "cityscapes"}, "model": {"pretrained": True, "pretrained_source": "digits"}}
    with pytest.raises(RecipeError) as caught:
        load(write_recipe(tmp_path, tree))
    assert caught.value.key == "model.pretrained_source"


@pytest.mark.parametrize(
    ("global_batch", "world_size", "micro_batch", "accumulation"),
    [(8, 1, 2, 4), (8, 2, 2, 2), (12, 3, 2, 2), (8, 4, 2, 1), (8, 8, 1, 1)],
)
def test_global_batch_splits_over_the_processes_launched(
    global_batch: int, world_size: int, micro_batch: int, accumulation: int
) -> None:
    recipe = validate({"data": {"batch_size": 2, "global_batch_size": global_batch}})
    planned = with_batch_plan(recipe, world_size)
    assert (planned.data.batch_size, planned.optim.grad_accum_steps) == (micro_batch, accumulation)
    assert micro_batch * accumulation * world_size == global_batch == planned.data.global_batch_size


def test_global_batch_takes_the_fewest_equal_micro_batches_that_fit() -> None:
    recipe = validate({"data": {"batch_size": 3, "global_batch_size": 16}})
    planned = with_batch_plan(recipe, 1)  # 16 = 8 x 2: 6 or 7 micro-batches of at most 3 do not divide 16
    assert (planned.data.batch_size, planned.optim.grad_accum_steps) == (2, 8)
    assert with_batch_plan(planned, 1) == planned  # a resolved recipe (as written to recipe.yaml) plans the same


def test_global_batch_that_does_not_divide_names_its_key() -> None:
    recipe = validate({"data": {"batch_size": 2, "global_batch_size": 8}})
    with pytest.raises(RecipeError, match="3 processes") as error:
        with_batch_plan(recipe, 3)
    assert error.value.key == "data.global_batch_size"


def test_without_a_global_batch_the_recipe_is_kept() -> None:
    recipe = validate({"data": {"batch_size": 2}, "optim": {"grad_accum_steps": 3}})
    assert with_batch_plan(recipe, 2) is recipe


def test_base_size_is_long_then_short() -> None:
    assert validate({"data": {"augment": {"base_size": [2048, 512]}}}).data.augment.base_size == (2048, 512)
    with pytest.raises(RecipeError) as error:
        validate({"data": {"augment": {"base_size": [512, 2048]}}})
    assert error.value.key.startswith("data.augment")
