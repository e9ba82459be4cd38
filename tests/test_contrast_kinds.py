"""The registry of contrast kinds: built-in and entry-point kinds alike, their settings blocks checked before a run, and
a kind from a package outside the harness training in a sweep like a built-in one.

Importing this module registers examples/prototype_contrast the way `pip install -e` would, offline: its folder
on sys.path and a dist-info holding the entry points its pyproject.toml declares. The guarantee tests
(test_sync, test_probe, test_engine, test_distributed, test_kind_resume) parametrize over KINDS, the whole
registry read after that, so a kind added from outside gets every one of them.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli on Python 3.10
    import tomli as tomllib

from harness.engine.terms import CONTRAST_KINDS, ENTRY_POINT_GROUP, check_contrast, contrast_kinds, contrast_summary
from harness.recipe import RecipeError, load, validate
from tests.conftest import CPU_ENV, REPO, RUN, check
from tests.test_run import tiny_recipe, write

EXAMPLE = REPO / "examples" / "prototype_contrast"


def install_distribution(site: Path, project_dir: Path) -> None:
    """The package in `project_dir` declared in `site` as an installed distribution: its pyproject.toml's name,
    version and entry points in a dist-info (the package itself is importable from `project_dir`)."""
    project = tomllib.loads((project_dir / "pyproject.toml").read_text())["project"]
    dist_info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (dist_info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in points.items())
        for group, points in project.get("entry-points", {}).items()))


SITE = Path(tempfile.mkdtemp(prefix="harness-kinds-"))
atexit.register(shutil.rmtree, SITE, ignore_errors=True)
install_distribution(SITE, EXAMPLE)
sys.path[:0] = [str(SITE), str(EXAMPLE)]
importlib.invalidate_caches()
# Processes the tests start (run.py, torchrun) see the example's kind too.
KIND_ENV = {**CPU_ENV, "PYTHONPATH": os.pathsep.join([str(SITE), str(EXAMPLE), CPU_ENV["PYTHONPATH"]])}
KINDS = sorted(contrast_kinds())  # every registered kind, the example's included
SHARDED = sorted(name for name, spec in contrast_kinds().items() if spec.shards)


def kind_variants() -> dict[str, dict[str, object]]:
    """A sweep's variants: every registered kind with its defaults, named after it, and `<kind>_sharded` for each
    kind whose bank shards."""
    variants = {name: {"loss.contrast.kind": name} for name in KINDS}
    return variants | {f"{name}_sharded": {"loss.contrast.kind": name, "loss.contrast.bank_layout": "sharded"}
                       for name in SHARDED}


def contrast(**keys: object) -> object:
    """The loss.contrast section of a recipe holding `keys`."""
    return validate({"loss": {"contrast": keys}}).loss.contrast


def test_built_in_and_entry_point_kinds_are_one_registry() -> None:
    assert set(CONTRAST_KINDS) | {"prototype"} <= set(contrast_kinds())
    assert contrast_kinds()["prototype"].block == "prototype"
    with pytest.raises(RecipeError) as error:
        check_contrast(contrast(kind="everything"))
    assert error.value.key == "loss.contrast.kind" and "region" in error.value.message and "prototype" in error.value.message


@pytest.mark.parametrize(("keys", "key", "words"), [
    ({"kind": "prototype", "prototype": {"momentum": 1.5}}, "loss.contrast.prototype.momentum", "less than 1"),
    ({"kind": "prototype", "prototype": {"momentun": 0.9}}, "loss.contrast.prototype.momentun", "Extra inputs"),
    ({"kind": "region", "prototype": {"momentum": 2}}, "loss.contrast.prototype.momentum", "less than 1"),
    ({"kind": "region", "protoype": {"momentum": 0.9}}, "loss.contrast.protoype", "no registered kind"),
    ({"kind": "pixel", "bank_layout": "sharded"}, "loss.contrast.bank_layout", "whose bank shards (region)"),
])
def test_a_settings_block_is_checked_by_its_kinds_model_naming_the_dotted_key(keys: dict, key: str, words: str) -> None:
    with pytest.raises(RecipeError) as error:
        check_contrast(contrast(**keys))
    assert error.value.key == key and words in error.value.message


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_recipe_passes_the_kinds_check(path: Path) -> None:
    for variant in load(path):
        check_contrast(variant.recipe.loss.contrast)


def test_an_undeclared_key_that_is_no_block_is_refused_by_the_recipe_itself() -> None:
    with pytest.raises(RecipeError) as error:
        contrast(kind="region", bank_szie=3)
    assert error.value.key == "loss.contrast.bank_szie" and "unknown key" in error.value.message


def test_a_kinds_summary_fields_come_from_its_spec() -> None:
    assert contrast_summary(contrast(kind="region"), 300) == {"center_variant": "weighted", "bank_size": 300}
    assert contrast_summary(contrast(kind="region"), None) == {"center_variant": "weighted", "bank_size": None}
    assert contrast_summary(contrast(kind="prototype", prototype={"momentum": 0.9}), 300) == {
        "contrast_settings": {"momentum": 0.9}, "bank_size": 1}
    assert contrast_summary(contrast(kind="prototype"), None)["contrast_settings"] == {"momentum": 0.99}
    assert contrast_summary(contrast(kind="none"), 300) == {}


def test_a_bad_entry_point_stops_the_check_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    dist_info = site / "broken-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbroken = json:dumps\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(RecipeError) as error:
        check_contrast(contrast(kind="none"))
    assert "entry point broken = json:dumps" in error.value.message and "not a harness.engine.terms.ContrastKind" in (
        error.value.message)


# A researcher's smallest package: one module with a term and its spec, one entry point naming the spec.
TOY_MODULE = '''
"""A toy contrastive loss: the mean squared cosine similarity between this rank's region centers."""

import torch.nn.functional as F

from harness.engine.terms import ContrastKind, TermInputs, local_centers


class ToyTerm:
    bank = None  # in-batch: nothing to remember

    def __init__(self, inputs: TermInputs) -> None:
        self.inputs = inputs

    def __call__(self, output, batch, with_loss=True, push=True):
        if not with_loss:
            return None
        centers, valid = local_centers(self.inputs, output, batch["label"])  # [B,N,C], [B,N]
        unit = F.normalize(centers[valid], dim=1)  # [M,C]
        return (unit @ unit.T).pow(2).mean() / self.inputs.cfg.tau


KIND = ContrastKind(ToyTerm)
'''
ENTRY_POINTS = f"[{ENTRY_POINT_GROUP}]\ntoy = toy_contrast:KIND\n"


def install_toy_package(site: Path) -> None:
    """toy_contrast, importable from `site`, declaring its kind as an installed distribution does."""
    dist_info = site / "toy_contrast-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (site / "toy_contrast.py").write_text(textwrap.dedent(TOY_MODULE))
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-contrast\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_kind_registered_from_outside_runs_a_two_variant_sweep(tmp_path: Path) -> None:
    site = tmp_path / "site"
    install_toy_package(site)
    tree = tiny_recipe(tmp_path, optim={"iterations": 3})
    tree["sweep"] = {"variants": {"ce": {"loss.contrast.kind": "none"}, "toy": {"loss.contrast.kind": "toy"}},
                     "baseline": "ce"}
    env = {**CPU_ENV, "PYTHONPATH": os.pathsep.join([str(site), CPU_ENV["PYTHONPATH"]])}
    check(subprocess.run([sys.executable, RUN, str(write(tmp_path, tree))], capture_output=True, text=True,
                         cwd=tmp_path, env=env))
    results = tmp_path / "results" / "tiny"
    toy = json.loads((results / "toy" / "summary.json").read_text())
    assert toy["status"] == "ok" and toy["contrast_kind"] == "toy"
    records = [json.loads(line) for line in (results / "toy" / "metrics.jsonl").read_text().splitlines()]
    assert all(record["loss_contrast"] > 0 for record in records if record["kind"] == "train")
    assert "loss_contrast" not in (results / "ce" / "metrics.jsonl").read_text()
    assert (tmp_path / "reports" / "tiny" / "report.md").is_file()
    # Without the package on the path, the kind is unknown: exit 2 before anything is written.
    done = subprocess.run([sys.executable, RUN, str(write(tmp_path, tree)), "--set", "run.name=again"],
                          capture_output=True, text=True, cwd=tmp_path, env=CPU_ENV)
    assert done.returncode == 2 and "loss.contrast.kind: unknown kind 'toy'" in done.stderr
    assert not (tmp_path / "results" / "again").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_a_bad_settings_block_stops_the_run_before_anything_is_written(tmp_path: Path) -> None:
    tree = tiny_recipe(tmp_path, loss={"contrast": {"kind": "prototype", "prototype": {"momentum": 7}}})
    done = subprocess.run([sys.executable, RUN, str(write(tmp_path, tree))], capture_output=True, text=True,
                          cwd=tmp_path, env=KIND_ENV)
    assert done.returncode == 2 and "loss.contrast.prototype.momentum: Input should be less than 1" in done.stderr
    assert not (tmp_path / "results").exists()
