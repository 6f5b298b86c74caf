import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModel

import robust_hub
from robust_hub import RobustHubError
from robust_hub.models import DualBatchNorm

from helpers import with_distinct_bn_statistics


def trained_like(model):
    return with_distinct_bn_statistics(model)


@pytest.fixture
def tiny():
    return trained_like(robust_hub.create_backbone("robust_resnet_tiny"))


@pytest.mark.parametrize("name,size,dim", [("robust_resnet18", 32, 512), ("robust_resnet50", 32, 2048),
                                           ("robust_wrn28_10", 32, 640), ("robust_resnet18_stl", 96, 512)])
def test_architectures_give_pooled_features_and_embeddings(name, size, dim):
    model = robust_hub.create_backbone(name).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, dim)
        assert model(x, route="normal", project=True).shape == (2, dim)
    assert model.num_features == dim


def test_resnet18_matches_the_cifar_variant():
    model = robust_hub.create_backbone("robust_resnet18", dual_bn=False, proj_layers=0)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.bias is None
    assert isinstance(model.maxpool, torch.nn.Identity)
    # torchvision's resnet18 minus its 7x7 stem (+3x3 conv stem) and its 1000-way fc
    tv = 11_689_512 - 64 * 3 * 7 * 7 + 64 * 3 * 3 * 3 - (512 * 1000 + 1000)
    assert sum(p.numel() for p in model.parameters()) == tv


def test_routes_use_separate_batch_norms(tiny):
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(tiny(x, route="normal"), tiny(x, route="pgd"))
        assert torch.equal(tiny(x), tiny(x, route="pgd"))  # pgd is the default route
    assert sum(isinstance(m, DualBatchNorm) for m in tiny.modules()) > 0
    with pytest.raises(RobustHubError, match="route"):
        tiny(x, route="adversarial")


def test_normalisation_is_inside_the_model(tiny):
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = tiny.forward_head(tiny.forward_body((x - mean) / std), pre_logits=True)
        assert torch.allclose(tiny(x), expected)


def test_any_timm_model_is_a_single_bn_backbone():
    model = robust_hub.create_backbone("resnet10t", proj_layers=2).eval()
    assert not model.dual_bn and not any(isinstance(m, DualBatchNorm) for m in model.modules())
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32), project=True).shape == (2, model.num_features)


def test_three_libraries_load_identical_outputs(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = tiny(x)
        ours = robust_hub.from_pretrained(str(tmp_path / "m"))(x)
        via_timm = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True).eval()(x)
        via_transformers = AutoModel.from_pretrained(tmp_path / "m").eval()(pixel_values=x).pooler_output
    assert torch.equal(ours, expected)
    assert torch.equal(via_timm, expected)
    assert torch.allclose(via_transformers, expected, atol=1e-6)
    processor = AutoImageProcessor.from_pretrained(tmp_path / "m")
    assert tuple(processor.data_config["mean"]) == (0.0, 0.0, 0.0)  # normalisation is not repeated outside


def test_saved_config_describes_the_model(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m", metadata={"training": {"seed": 1}})
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architecture"] == "robust_resnet_tiny"
    assert config["model_args"]["widths"] == [16, 32, 64, 128]
    assert config["robust_hub"]["default_route"] == "pgd" and config["robust_hub"]["dual_bn"] is True
    assert config["robust_hub"]["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert config["robust_hub"]["input_size"] == [3, 32, 32]
    assert config["robust_hub"]["training"] == {"seed": 1}
    assert (tmp_path / "m" / "preprocessor_config.json").is_file()
    assert set(load_file(tmp_path / "m" / "model.safetensors")) == set(tiny.state_dict())


def test_bad_inputs_fail_with_one_clear_error(tiny, tmp_path):
    with pytest.raises(RobustHubError, match="unknown architecture"):
        robust_hub.create_backbone("resnet_999")
    with pytest.raises(RobustHubError, match="does not exist"):
        robust_hub.from_pretrained(str(tmp_path / "missing"))
    tiny.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RobustHubError, match="corrupt"):
        robust_hub.from_pretrained(str(tmp_path / "m"))
    (tmp_path / "m" / "model.safetensors").unlink()
    torch.save(tiny.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(RobustHubError, match="pickle"):
        robust_hub.from_pretrained(str(tmp_path / "m"))


def test_nan_weights_are_refused_on_load_and_on_save(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    state = load_file(tmp_path / "m" / "model.safetensors")
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, tmp_path / "m" / "model.safetensors")
    with pytest.raises(RobustHubError, match="NaN"):
        robust_hub.from_pretrained(str(tmp_path / "m"))
    with torch.no_grad():
        tiny.conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(RobustHubError, match="NaN"):
        tiny.save_pretrained(tmp_path / "nan")
    assert not (tmp_path / "nan").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging directory left behind


def test_mismatched_weights_are_refused(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model_args"]["widths"] = [8, 16, 32, 64]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RobustHubError, match="do not match"):
        robust_hub.from_pretrained(str(tmp_path / "m"))


def test_saving_over_an_existing_model_replaces_it_whole(tiny, tmp_path):
    other = trained_like(robust_hub.create_backbone("robust_resnet_tiny", dual_bn=False))
    other.save_pretrained(tmp_path / "m")
    tiny.save_pretrained(tmp_path / "m")
    reloaded = robust_hub.from_pretrained(str(tmp_path / "m"))
    assert reloaded.dual_bn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
