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
