"""STL-10 in the benchmark's two settings, and the benchmark's per-method finetuning preset."""

from pathlib import Path

import pytest
import torch
import yaml

import robust_hub
from robust_hub.errors import RobustHubError
from robust_hub.evaluation import runner
from robust_hub.evaluation.presets import preset_settings
from robust_hub.evaluation.protocols import default_protocol_config

REPO = Path(__file__).resolve().parents[1]


def test_stl10_configs_pre_train_on_the_unlabeled_split():
    paths = sorted((REPO / "configs").glob("*_stl10.yaml"))
    assert len(paths) == 4
    for path in paths:  # method.md: every reference pre-trains STL-10 on its 100,000-image unlabeled split
        assert yaml.safe_load(path.read_text())["data"]["split"] == "unlabeled", path.name


def test_stl10_protocols_follow_the_benchmarks_two_settings():
    # method.md: 32x32, SLF/ALF lr 0.01 batch 128; native 96x96, SLF/ALF lr 0.1 batch 512, AFF drops at 10 and 20
    for name in ("slf", "alf"):
        small, native = (default_protocol_config(name, "stl10", image_size=s) for s in (32, 96))
        assert (small.lr, small.batch_size) == (0.01, 128) and (native.lr, native.batch_size) == (0.1, 512)
    assert default_protocol_config("aff", "stl10", image_size=96).milestones == (10, 20)
    assert default_protocol_config("aff", "stl10", image_size=32).milestones == (15, 20)
    assert default_protocol_config("slf", "cifar10").lr == 0.01 and default_protocol_config("slf", "cifar100").lr == 0.05


def tiny_backbone(size):
    torch.manual_seed(0)
    model = robust_hub.create_backbone("robust_resnet_tiny", dual_bn=True)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, size, size)}
    return model


@pytest.mark.parametrize("size", [32, 96])
def test_stl10_is_loaded_at_the_models_size_and_finetuned_with_that_settings(monkeypatch, tmp_path, size):
    loaded = []

    def load_split(dataset, split, image_size=None, n=None):
        loaded.append((dataset, split, image_size))
        generator = torch.Generator().manual_seed(len(loaded))
        images = (torch.rand(8, 3, image_size, image_size, generator=generator) * 255).to(torch.uint8)
        return runner.SplitData(images, torch.arange(8) % 10, 10, "tanganke/stl10", split, f"fp{len(loaded)}")

    monkeypatch.setattr(runner, "load_split", load_split)
    (record,) = runner.evaluate(tiny_backbone(size), protocols="slf", dataset="stl10", out_dir=tmp_path, metrics="clean",
                                protocol_overrides={"epochs": 1}, progress=False, print_table=False, device="cpu")
    assert loaded == [("stl10", "train", size), ("stl10", "test", size)]  # native 96x96, never upsampled from 32
    settings = record["protocol"]["settings"]
    assert settings["image_size"] == size and settings["preset"] == "uniform"
    assert (settings["lr"], settings["batch_size"]) == ((0.1, 512) if size == 96 else (0.01, 128))


def test_benchmark_preset_changes_only_what_the_benchmark_tuned():
    # method.md: ACL's AFF runs 100 epochs with drops at 40 and 60; DynACL-AIR's SLF 5 epochs on CIFAR-10
    assert preset_settings("benchmark:acl", "aff", "cifar10") == {"epochs": 100, "milestones": (40, 60)}
    assert preset_settings("benchmark:dynacl_ir", "slf", "cifar10") == {"epochs": 5}
    assert preset_settings("benchmark:dynacl_ir", "slf", "cifar100") == {"lr": 0.1}
    assert preset_settings("benchmark:acl_ir", "slf", "stl10", image_size=96) == {"lr": 0.01}
    assert preset_settings("benchmark:dynacl", "aff", "cifar10") == {}
    assert preset_settings("uniform", "aff", "cifar10") == {}
    with pytest.raises(RobustHubError, match="unknown finetuning preset"):
        preset_settings("benchmark:simclr", "slf", "cifar10")


def test_the_record_names_the_preset_and_carries_its_settings(monkeypatch, tmp_path):
    def load_split(dataset, split, image_size=None, n=None):
        images = (torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
        return runner.SplitData(images, torch.arange(8) % 10, 10, "uoft-cs/cifar10", split, "fp")

    monkeypatch.setattr(runner, "load_split", load_split)
    (record,) = runner.evaluate(tiny_backbone(32), protocols="slf", dataset="cifar10", out_dir=tmp_path, metrics="clean",
                                preset="benchmark:dynacl_ir", progress=False, print_table=False, device="cpu")
    settings = record["protocol"]["settings"]
    assert settings["preset"] == "benchmark:dynacl_ir" and settings["epochs"] == 5 and settings["lr"] == 0.01


def test_an_unknown_preset_is_one_error_line(capsys):
    from robust_hub.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["eval", "some/model", "--out", "results", "--preset", "benchmark:simclr"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error:") and err.count("\n") == 1 and "--preset" in err


def test_tables_name_a_non_uniform_preset_and_its_settings_are_not_a_change():
    from robust_hub.evaluation.measured_on import measured_on
    from robust_hub.model_card import CardInputs, Published, results_table

    settings = {"epochs": 5, "preset": "benchmark:dynacl_ir",
                "eval": {"full_sizes": {"train": 50000, "test": 10000}}}
    record = {"protocol": {"name": "slf", "settings": settings}, "created_at": "2026-12-01T00:00:00+00:00",
              "model": {"weights_sha256": "0" * 64}, "metric_set": ["clean"],
              "dataset": {"source": "cifar10", "n_test": 10000, "n_train": 50000}, "threat": {"norm": "linf", "eps": 8 / 255},
              "metrics": {"clean_acc": 0.8}, "flags": []}
    table = results_table(CardInputs({}, results=[Published(record, "robust-hub eval")]))
    assert "SLF (epochs 5, preset benchmark:dynacl_ir)" in table
    assert measured_on(record).changed == ()  # 5 epochs is what the benchmark preset runs for DynACL+IR's SLF
    uniform = {**record, "protocol": {"name": "slf", "settings": {**settings, "epochs": 5, "preset": "uniform"}}}
    assert "SLF (epochs 5) " in results_table(CardInputs({}, results=[Published(uniform, "robust-hub eval")]))
    assert measured_on(uniform).changed == (("epochs", 5, 25),)  # the uniform protocol's SLF runs 25 epochs