"""DynACL++ post-processing: k-means pseudo-labels, linear head, TRADES; the result loads everywhere."""

import numpy as np
import pytest
import timm
import torch
from transformers import AutoModel

import robust_hub
from robust_hub.cli import main
from robust_hub.training.postprocess import pseudo_labels
from helpers import with_distinct_bn_statistics

X = torch.rand(2, 3, 32, 32)


def test_pseudo_labels_recover_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = rng.integers(0, 3, size=90)
    features = centres[truth] + rng.normal(scale=0.3, size=(90, 2))
    labels = pseudo_labels(features, 3, seed=0)
    # the same partition up to renaming the clusters: each true group maps to one label, one-to-one
    assert {len(set(labels[truth == g])) for g in range(3)} == {1} and len(set(labels)) == 3


def test_postprocess_writes_a_backbone_that_loads_in_all_three_libraries(tmp_path, capsys):
    source = with_distinct_bn_statistics(robust_hub.create_backbone("robust_resnet_tiny", dual_bn=True))
    src_dir, out = tmp_path / "pretrained", tmp_path / "postprocessed"
    source.save_pretrained(str(src_dir), metadata={"training": {"config": {"data": {"source": "embedded:digits"}}}})
    args = ["postprocess", str(src_dir), "--out", str(out), "--clusters", "3", "--linear-epochs", "1",
            "--trades-epochs", "1", "--n-train", "64"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == f"model written to {out}"

    model = robust_hub.from_pretrained(str(out)).eval()
    record = model.hub_config["robust_hub"]["postprocessed"]
    assert record["source_model"] == str(src_dir) and record["settings"]["dataset"] == "embedded:digits"
    assert record["clusters"] == 3 and sum(record["cluster_sizes"]) == 64 and record["trades_protocol"]["trades_beta"] == 6.0
    with torch.no_grad():
        ours = model(X)
        assert not torch.allclose(ours, source.eval()(X), atol=1e-4)  # TRADES changed the weights
        via_timm = timm.create_model(f"local-dir:{out}", pretrained=True).eval()(X)
        via_transformers = AutoModel.from_pretrained(str(out)).eval()(pixel_values=X).pooler_output
    assert torch.allclose(via_timm, ours, atol=1e-6) and torch.allclose(via_transformers, ours, atol=1e-6)
    card = (out / "README.md").read_text()
    assert "DynACL++ post-processed from `pretrained (local)`" in card and "k = 3" in card and "TRADES" in card
    assert str(tmp_path) not in card  # no path of this machine

    # a second run into the same directory is refused, and leaves it as it was
    before = (out / "model.safetensors").read_bytes()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err and (out / "model.safetensors").read_bytes() == before


def test_postprocess_without_a_known_dataset_is_one_error_line(tmp_path, capsys):
    src_dir = tmp_path / "plain"
    robust_hub.create_backbone("robust_resnet_tiny", dual_bn=True).save_pretrained(str(src_dir))
    assert main(["postprocess", str(src_dir), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --dataset" in err and not (tmp_path / "out").exists()


def run_small_postprocess(monkeypatch, images=32):
    """postprocess() on a tiny dual-BN model, recording what k-means, both finetuning steps and TRADES' attack got."""
    from robust_hub.evaluation import protocols
    from robust_hub.training import postprocess as module

    seen = {"finetune": [], "trades_start": []}
    real_finetune, real_kmeans, real_attack = module.finetune, module.pseudo_labels, protocols.trades_attack

    def finetune(*args, **kwargs):
        seen["finetune"].append((args[5], kwargs.get("head")))
        return real_finetune(*args, **kwargs)

    def kmeans(features, clusters, seed):
        seen["features"] = features
        return real_kmeans(features, clusters, seed)

    def trades_attack(model, x, cfg, init_std=0.001):
        seen["trades_start"].append(init_std)
        return real_attack(model, x, cfg, init_std=init_std)

    monkeypatch.setattr(module, "finetune", finetune)
    monkeypatch.setattr(module, "pseudo_labels", kmeans)
    monkeypatch.setattr(protocols, "trades_attack", trades_attack)
    torch.manual_seed(0)
    model = with_distinct_bn_statistics(robust_hub.create_backbone("robust_resnet_tiny", dual_bn=True))
    data = (torch.rand(images, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    cfg = module.PostprocessConfig(dataset="in-memory", clusters=2, linear_epochs=1, trades_epochs=1)
    _, record = module.postprocess(model, "source", data, cfg, None)
    return model, data, seen, record


def test_dynacl_pp_uses_the_reference_lpaft_settings(monkeypatch):
    """method.md's DynACL++ (the reference LPAFT): a zero-initialised head trained with SGD lr 0.01, momentum 0.9,
    wd 1e-4; then TRADES with SGD lr 0.1, momentum 0.9, wd 1e-4, batch 512, drops at epochs 10 and 20, its
    attack starting at x. The evaluation protocols keep theirs (wd 2e-4, batch 128, drops at 15 and 20, noise)."""
    from robust_hub.evaluation.protocols import default_protocol_config

    _, _, seen, record = run_small_postprocess(monkeypatch)
    (linear, head), (trades, trades_head) = seen["finetune"]
    assert (linear.name, linear.lr, linear.momentum, linear.weight_decay) == ("slf", 0.01, 0.9, 1e-4)
    assert torch.count_nonzero(head.weight) == 0 and torch.count_nonzero(head.bias) == 0
    assert (trades.name, trades.lr, trades.momentum, trades.weight_decay, trades.trades_beta) == ("aff", 0.1, 0.9, 1e-4, 6.0)
    assert trades.batch_size == 512 and trades.milestones == (10, 20) and trades.trades_start_noise == 0.0
    assert trades.train_attack.steps == 10 and trades.train_attack.alpha == pytest.approx(2 / 255)
    assert seen["trades_start"] and set(seen["trades_start"]) == {0.0}  # the attack really starts at x
    assert torch.count_nonzero(trades_head.weight) > 0  # TRADES starts from the trained head
    assert record["trades_protocol"]["weight_decay"] == 1e-4 and record["linear_protocol"]["head_init"] == "zero"
    aff = default_protocol_config("aff")
    assert (aff.weight_decay, aff.batch_size, aff.milestones, aff.trades_start_noise) == (2e-4, 128, (15, 20), 0.001)


def test_dynacl_pp_clusters_clean_route_features_of_the_untouched_images(monkeypatch):
    model, images, seen, _ = run_small_postprocess(monkeypatch)
    x = images.float().div(255)
    with torch.no_grad():
        clean = model.eval()(x, route="normal").numpy()
        adversarial_route = model.eval()(x, route="pgd").numpy()
    assert np.allclose(seen["features"], clean, atol=1e-5)
    assert not np.allclose(seen["features"], adversarial_route, atol=1e-3)  # the routes really differ here
