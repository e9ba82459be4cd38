"""Tests for harness.models: head shapes, strides, validation, pretrained and local weights."""

import copy
import time
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch
from torch import nn

from harness.models import build_model, validate_model_config, weights_origin
from harness.models.heads import ASPP, ASPP_RATES, head_factory
from harness.recipe import ModelConfig, RecipeError, load

NUM_CLASSES = 5
SIZE = 64


def tiny(**overrides) -> ModelConfig:
    """A small resnet10t config; tests override what they exercise."""
    fields = dict(backbone="resnet10t", head_channels=16, aux_channels=8) | overrides
    return ModelConfig(**fields)


def run(cfg: ModelConfig):
    """Build cfg's model and run a 2-image batch through it in eval mode."""
    torch.manual_seed(0)
    model = build_model(cfg, NUM_CLASSES).eval()
    with torch.no_grad():
        return model, model(torch.randn(2, 3, SIZE, SIZE))


def backbone_state(model) -> dict[str, torch.Tensor]:
    """The model's backbone parameters and buffers."""
    return model.backbone.state_dict()


def assert_same_state(actual: dict, expected: dict) -> None:
    """Both state dicts hold the same keys and equal tensors."""
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


@pytest.mark.parametrize("head", ["deeplabv3", "fcn"])
@pytest.mark.parametrize("stride", [8, 16])
def test_resnet_heads_predict_at_the_output_stride(head, stride):
    model, out = run(tiny(head=head, output_stride=stride))
    side = SIZE // stride
    assert model.feature_stride == stride and model.feature_dim == 16
    assert out.logits.shape == (2, NUM_CLASSES, side, side)
    assert out.features.shape == (2, 16, side, side)
    # resnet10t's layer4 has 512 channels; layer3 (the aux input) is dilated too, so same stride.
    assert out.backbone_features.shape == (2, 512, side, side)
    assert out.aux_logits.shape == (2, NUM_CLASSES, side, side)


def test_aux_head_reads_stage_3():
    model, _ = run(tiny())
    assert model.aux_head.conv[0].in_channels == model.backbone.layer3[-1].conv2.out_channels


def test_aux_head_can_be_disabled():
    model, out = run(tiny(aux_head=False))
    assert model.aux_head is None and out.aux_logits is None


def test_hrnetv2_head_predicts_at_stride_4_from_four_branches():
    model, out = run(ModelConfig(backbone="hrnet_w18_small", output_stride=32, head="hrnetv2",
                                 head_channels=16, aux_head=True, aux_channels=8))
    assert model.feature_stride == 4 and model.feature_dim == 16
    assert model.backbone.feature_info.reduction() == [4, 8, 16, 32]
    assert out.logits.shape == (2, NUM_CLASSES, SIZE // 4, SIZE // 4)
    assert out.features.shape == (2, 16, SIZE // 4, SIZE // 4)
    assert out.aux_logits.shape == (2, NUM_CLASSES, SIZE // 16, SIZE // 16)
    assert out.backbone_features.shape[-1] == SIZE // 32
    assert not model.head.align_corners  # model.align_corners reaches the branches' upsampling too
    # The head fuses the raw branches, not timm's 'incre' classification expansion.
    assert model.head.fuse[0].in_channels == sum(model.backbone.feature_info.channels())


def test_hrnetv2_by_default_is_its_reference_head():
    """As wide as the concatenated branches (720 for W48), no aux head, no dropout."""
    cfg = ModelConfig(backbone="hrnet_w18_small", output_stride=32, head="hrnetv2")
    assert cfg.aux_head is False and cfg.head_channels is None
    model, out = run(cfg)
    width = sum(model.backbone.feature_info.channels())  # 16 + 32 + 64 + 128 for w18_small
    assert model.feature_dim == width and out.features.shape[1] == width
    assert model.head.fuse[0].out_channels == width
    assert model.aux_head is None and out.aux_logits is None
    assert not any(isinstance(module, nn.Dropout) for module in model.head.modules())
    assert [info["num_chs"] for info in timm.create_model("hrnet_w48", features_only=True, feature_location="",
                                                          out_indices=(1, 2, 3, 4), pretrained=False).feature_info.get_dicts()] \
        == [48, 96, 192, 384]  # so W48's head is 720 channels wide


def test_aux_head_default_follows_the_head_and_yields_to_the_recipe():
    assert ModelConfig().aux_head and ModelConfig(head="fcn").aux_head
    assert not ModelConfig(head="hrnetv2").aux_head
    assert ModelConfig(head="hrnetv2", aux_head=True).aux_head
    assert not ModelConfig(head="deeplabv3", aux_head=False).aux_head


@pytest.mark.parametrize("head", ["deeplabv3", "fcn"])
def test_dropout_sits_between_the_feature_map_and_the_classifier(head):
    """In training, F (which the region centers pool) is free of dropout noise; the logits are not."""
    torch.manual_seed(0)
    model = build_model(tiny(head=head, aux_head=False), NUM_CLASSES).train()
    images = torch.randn(2, 3, SIZE, SIZE)
    first, second = model(images), model(images)
    assert torch.equal(first.features, second.features)
    assert not torch.equal(first.logits, second.logits)
    assert model.feature_dim == 16 and build_model(ModelConfig(backbone="resnet10t", head=head), 3).feature_dim == 256


@pytest.mark.parametrize("stride, rates", [(8, (12, 24, 36)), (16, (6, 12, 18)), (32, (3, 6, 9))])
def test_aspp_rates_follow_the_stride(stride, rates):
    assert ASPP_RATES[stride] == rates
    model = build_model(tiny(output_stride=stride, aux_head=False), NUM_CLASSES)
    atrous = model.head.aspp.branches[1:]
    assert tuple(branch[0].dilation[0] for branch in atrous) == rates


def test_aspp_keeps_the_resolution_and_sets_channels():
    aspp = ASPP(in_channels=8, out_channels=12, atrous_rates=(1, 2, 3)).eval()
    assert aspp(torch.randn(2, 8, 7, 9)).shape == (2, 12, 7, 9)


def test_gradients_reach_backbone_and_heads():
    model = build_model(tiny(output_stride=16), NUM_CLASSES)
    out = model(torch.randn(2, 3, SIZE, SIZE))
    (out.logits.sum() + out.aux_logits.sum() + out.features.sum()).backward()
    for module in (model.backbone.conv1[0], model.head.classifier, model.aux_head.classifier):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


def test_unknown_head_lists_valid_names():
    with pytest.raises(KeyError, match="deeplabv3, fcn, hrnetv2"):
        head_factory("pspnet")


def error_for(cfg: ModelConfig) -> RecipeError:
    """The RecipeError that validation raises for cfg."""
    with pytest.raises(RecipeError) as caught:
        validate_model_config(cfg)
    return caught.value


def test_unknown_backbone_names_the_key_and_suggests():
    error = error_for(tiny(backbone="resnet5O"))
    assert error.key == "model.backbone" and "resnet50" in error.message


def test_hrnet_at_stride_8_names_output_stride():
    error = error_for(ModelConfig(backbone="hrnet_w18_small", output_stride=8, head="hrnetv2"))
    assert error.key == "model.output_stride" and "model.output_stride: 32 for hrnet" in error.message


def test_backbone_without_dilation_names_output_stride():
    # densenet has no output_stride argument; at its native 32 it builds.
    assert error_for(tiny(backbone="densenet121", output_stride=8)).key == "model.output_stride"
    validate_model_config(tiny(backbone="densenet121", output_stride=32))


def test_backbone_with_another_native_stride_names_output_stride():
    error = error_for(tiny(backbone="levit_128s", output_stride=32))
    assert error.key == "model.output_stride" and "stride 64" in error.message


def test_hrnetv2_head_needs_hrnet_backbone():
    assert error_for(tiny(head="hrnetv2")).key == "model.head"


def test_missing_weights_file_names_weights(tmp_path):
    error = error_for(tiny(weights=tmp_path / "absent.pth"))
    assert error.key == "model.weights" and "absent.pth" in error.message


def test_validation_is_fast_for_resnet50():
    start = time.perf_counter()
    validate_model_config(ModelConfig(backbone="resnet50", output_stride=8))
    assert time.perf_counter() - start < 2.0


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch) -> Path:
    """A Hugging Face cache with nothing in it, whatever this machine has cached."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_pretrained_offline_fails_fast_with_a_fix(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RecipeError) as caught:
        build_model(tiny(pretrained=True), NUM_CLASSES)
    assert time.perf_counter() - start < 5.0
    error = caught.value
    assert error.key == "model.pretrained"
    for part in ("resnet10t", "could not be downloaded", "HF_HUB_OFFLINE", "model.weights", "pretrained: false"):
        assert part in error.message


def test_pretrained_with_unreachable_hub_fails_fast(empty_hub_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # Nothing listens on port 1, so the connection is refused at once.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:1")
    start = time.perf_counter()
    with pytest.raises(RecipeError, match="unreachable"):
        build_model(tiny(pretrained=True), NUM_CLASSES)
    assert time.perf_counter() - start < 5.0


def cache_weights(cache: Path, name: str) -> nn.Module:
    """Put a random classifier's weights into `cache` as timm's Hub file of `name` (tag included); return it."""
    classifier = timm.create_model(name)
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    safetensors.torch.save_file(classifier.state_dict(), snapshot / "model.safetensors")
    return classifier


def test_pretrained_loads_from_the_hub_cache_offline(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    classifier = cache_weights(empty_hub_cache, "resnet10t")
    model = build_model(tiny(pretrained=True), NUM_CLASSES)
    assert torch.equal(model.backbone.conv1[0].weight, classifier.conv1[0].weight)
    assert torch.equal(model.backbone.layer4[0].bn1.running_var, classifier.layer4[0].bn1.running_var)


def test_a_pinned_tag_loads_those_weights_and_the_summary_names_it(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    classic = cache_weights(empty_hub_cache, "resnet18.tv_in1k")  # only the classic torchvision weights are cached
    cfg = ModelConfig(backbone="resnet18.tv_in1k", pretrained=True, head_channels=8, aux_channels=8)
    model = build_model(cfg, NUM_CLASSES)
    assert torch.equal(model.backbone.layer1[0].conv1.weight, classic.layer1[0].conv1.weight)
    assert weights_origin(cfg) == "timm:resnet18.tv_in1k"
    # Without a tag timm picks its default, a recent recipe: the summary says which.
    assert weights_origin(cfg.model_copy(update={"backbone": "resnet18"})) == "timm:resnet18.a1_in1k"
    with pytest.raises(RecipeError, match="a1_in1k"):  # its weights are not in this cache
        build_model(cfg.model_copy(update={"backbone": "resnet18"}), NUM_CLASSES)
    assert weights_origin(cfg.model_copy(update={"pretrained": False})) == "random"


def test_unknown_weights_tag_names_the_backbone_and_lists_the_tags():
    error = error_for(ModelConfig(backbone="resnet18.imagenet"))
    assert error.key == "model.backbone" and "'imagenet'" in error.message and "tv_in1k" in error.message


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_load_into_the_backbone(tmp_path, suffix):
    source = build_model(tiny(), NUM_CLASSES)
    path = tmp_path / f"backbone{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(backbone_state(source), path)
    else:
        torch.save(backbone_state(source), path)
    loaded = build_model(tiny(weights=path), NUM_CLASSES)
    assert_same_state(backbone_state(loaded), backbone_state(source))


def test_local_weights_ignore_classifier_keys(tmp_path):
    classifier = timm.create_model("resnet10t")
    path = tmp_path / "imagenet.pth"
    torch.save({"state_dict": classifier.state_dict()}, path)
    loaded = build_model(tiny(weights=path), NUM_CLASSES)
    expected = {key: value for key, value in classifier.state_dict().items() if not key.startswith("fc.")}
    assert_same_state(backbone_state(loaded), expected)


def test_local_weights_report_missing_and_unexpected_keys(tmp_path):
    state = backbone_state(build_model(tiny(), NUM_CLASSES))
    state["stray.weight"] = state.pop("layer4.0.conv1.weight")
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(RecipeError) as caught:
        build_model(tiny(weights=path), NUM_CLASSES)
    assert caught.value.key == "model.weights"
    assert "layer4.0.conv1.weight" in caught.value.message and "stray.weight" in caught.value.message


def _norm(kind: str) -> nn.Module:
    """A 4-channel batch norm of one of the classes a model here can hold."""
    from timm.layers import BatchNormAct2d

    from harness.models import synchronised_batch_norms

    return {"batchnorm": lambda: nn.BatchNorm2d(4), "syncbatchnorm": lambda: nn.SyncBatchNorm(4),
            "batchnormact": lambda: BatchNormAct2d(4, act_layer=nn.ReLU),
            "syncbatchnormact": lambda: synchronised_batch_norms(BatchNormAct2d(4, act_layer=nn.ReLU))}[kind]()


@pytest.mark.parametrize("kind", ["batchnorm", "syncbatchnorm", "batchnormact", "syncbatchnormact"])
def test_float32_batch_norms_match_their_class_and_accept_deepspeed_half_parameters(kind: str) -> None:
    from harness.models.norms import FLOAT32_NORMS, batchnorm_in_float32

    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(3, 4, 1), _norm(kind))
    with torch.no_grad():
        reference[1].weight.uniform_(0.5, 1.5), reference[1].bias.uniform_(-1, 1)
    converted = batchnorm_in_float32(copy.deepcopy(reference))
    assert type(converted[1]) is FLOAT32_NORMS[type(reference[1])]
    x = torch.randn(2, 3, 5, 5)
    for mode in (True, False):  # train: batch statistics and running updates; eval: running statistics
        reference.train(mode), converted.train(mode)
        assert torch.allclose(reference(x), converted(x), atol=1e-6)
    assert torch.allclose(reference[1].running_mean, converted[1].running_mean)
    # DeepSpeed bf16: parameters in bf16, running statistics left in fp32, bf16 input.
    norm = converted[1].train()
    norm.weight.data, norm.bias.data = norm.weight.data.bfloat16(), norm.bias.data.bfloat16()
    features = reference[0](x).detach()
    out = norm(features.bfloat16())
    assert out.dtype == torch.bfloat16 and norm.running_mean.dtype == torch.float32
    assert torch.allclose(out.float(), reference[1].train()(features), atol=0.05)
    out.float().square().sum().backward()
    assert norm.weight.grad.dtype == torch.bfloat16 and norm.weight.grad.abs().sum() > 0
    assert norm.weight.dtype == torch.bfloat16  # the parameter itself is left as DeepSpeed made it


def test_sync_bn_keeps_timm_norm_activations() -> None:
    """torch's converter would turn BatchNormAct2d into a plain SyncBatchNorm and drop its ReLU."""
    from timm.layers import SyncBatchNormAct

    from harness.models import synchronised_batch_norms

    model = synchronised_batch_norms(nn.Sequential(nn.Conv2d(3, 4, 1), _norm("batchnormact"), nn.BatchNorm2d(4)))
    assert type(model[1]) is SyncBatchNormAct and isinstance(model[1].act, nn.ReLU)
    assert type(model[2]) is nn.SyncBatchNorm
    model.eval()
    assert (model[1](torch.randn(2, 4, 3, 3)) >= 0).all()


RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[path.stem for path in RECIPES])
def test_shipped_recipes_build_and_pin_their_weights(path: Path):
    for variant in load(path):
        cfg = variant.recipe.model
        validate_model_config(cfg)  # the backbone, its tag, the head and the stride all fit
        if cfg.pretrained and cfg.pretrained_source == "timm":
            # An untagged name loads whatever timm's default is this year (resnet50: a1_in1k).
            assert "." in cfg.backbone, f"{variant.name}: pin timm's weights with a tag, e.g. resnet50.tv_in1k"
