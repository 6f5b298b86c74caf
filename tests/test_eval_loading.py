"""Loading any backbone: robust-hub, timm and transformers directories; strict, clear failures."""

import json

import pytest
import torch

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.loading import EvalBackbone, load_backbone, sha256_file


def save_tiny_timm(path):
    import timm
    from timm.models import save_for_hf

    model = timm.create_model("test_resnet", num_classes=0, pretrained=False)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32)}
    save_for_hf(model, str(path), safe_serialization=True)
    return model.eval()


def save_tiny_vit(path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32)
    model = ViTModel(cfg).eval()
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.25] * 3).save_pretrained(path)
    return model


def save_tiny_hf_resnet(path):
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetModel

    torch.manual_seed(0)
    model = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).eval()
    model.save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(path)
    return model


@pytest.fixture
def images():
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_timm_directory_normalises_and_resizes_inside(tmp_path, images):
    import torch.nn.functional as F

    ref = save_tiny_timm(tmp_path / "timm")
    bb = load_backbone(tmp_path / "timm")
    assert isinstance(bb, EvalBackbone) and bb.info.library == "timm"
    assert bb.info.weights_sha256 == sha256_file(tmp_path / "timm" / "model.safetensors")
    assert bb.info.revision.startswith("local-sha256:")
    mean = torch.tensor(ref.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ref.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref((F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False) - mean) / std)
        assert torch.allclose(bb(images), expected, atol=1e-5)
    assert bb(images).shape == (4, bb.num_features)


def test_transformers_vit_directory_uses_pooled_output(tmp_path, images):
    ref = save_tiny_vit(tmp_path / "vit")
    bb = load_backbone(str(tmp_path / "vit"))
    assert bb.info.library == "transformers" and bb.input_size == (16, 16)
    with torch.no_grad():
        expected = ref(pixel_values=(images - 0.5) / 0.25).pooler_output
        assert torch.allclose(bb(images), expected, atol=1e-5)


def test_transformers_resnet_without_processor_flags_guessed_normalisation(tmp_path, images):
    from transformers import ResNetConfig, ResNetModel

    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(tmp_path / "r")
    bb = load_backbone(tmp_path / "r")
    assert "normalisation_guessed" in bb.info.flags
    assert bb(images).shape == (4, 16)


def test_robust_hub_backbone_directory(tmp_path, images):
    import robust_hub

    model = robust_hub.create_backbone("robust_resnet_tiny").eval()
    model.save_pretrained(tmp_path / "rh")
    bb = load_backbone(tmp_path / "rh")
    assert bb.info.library == "robust_hub"
    with torch.no_grad():
        assert torch.allclose(bb(images), model(torch.nn.functional.interpolate(
            images, size=(32, 32), mode="bilinear", align_corners=False)), atol=1e-5)


def test_missing_directory_and_unknown_id_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(RobustHubError, match="does not exist"):
        load_backbone(tmp_path / "nope")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(RobustHubError, match="cannot resolve hub model"):
        load_backbone("no-such-org/no-such-model")
    with pytest.raises(RobustHubError):
        load_backbone("definitely_not_a_timm_model")


def test_corrupt_safetensors_fails_clearly(tmp_path):
    save_tiny_timm(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(RobustHubError, match="safetensors"):
        load_backbone(tmp_path / "m")


def test_missing_weights_and_bad_config_fail_clearly(tmp_path):
    save_tiny_timm(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(RobustHubError, match="no weight file"):
        load_backbone(tmp_path / "m")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text("{oops")
    with pytest.raises(RobustHubError, match="JSON"):
        load_backbone(tmp_path / "c")


def test_pickle_weights_need_explicit_permission(tmp_path, images):
    ref = save_tiny_timm(tmp_path / "p")
    (tmp_path / "p" / "model.safetensors").unlink()
    torch.save(ref.state_dict(), tmp_path / "p" / "pytorch_model.bin")
    with pytest.raises(RobustHubError, match="allow-pickle"):
        load_backbone(tmp_path / "p")
    bb = load_backbone(tmp_path / "p", allow_pickle=True)
    assert bb(images).shape[1] == ref.num_features
    torch.save(ref.state_dict(), tmp_path / "ref.pt")
    with pytest.raises(RobustHubError, match="allow-pickle"):
        load_backbone(tmp_path / "ref.pt")


def test_remote_code_is_refused(tmp_path):
    save_tiny_vit(tmp_path / "v")
    cfg = json.loads((tmp_path / "v" / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (tmp_path / "v" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RobustHubError, match="remote code"):
        load_backbone(tmp_path / "v")


def test_in_memory_module_gets_a_content_hash():
    from test_eval_helpers import TinyBackbone

    a, b = load_backbone(TinyBackbone()), load_backbone(TinyBackbone())
    assert a.info.weights_sha256 == b.info.weights_sha256
    m = TinyBackbone()
    with torch.no_grad():
        m.fc.bias.add_(1)
    assert load_backbone(m).info.weights_sha256 != a.info.weights_sha256
