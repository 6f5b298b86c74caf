"""Evaluating a Hub model over HTTP (the local stand-in): results pin the commit that was evaluated."""

import torch

import robust_hub
from robust_hub.data import load_image_dataset
from robust_hub.evaluation.runner import evaluate
from robust_hub.hub_push import push_to_hub

from helpers import with_distinct_bn_statistics


def test_hub_model_results_name_the_resolved_commit(hub, tmp_path):
    model = with_distinct_bn_statistics(robust_hub.create_backbone("robust_resnet_tiny"))
    model.save_pretrained(tmp_path / "m")
    first = push_to_hub(str(tmp_path / "m"), "org/tiny")
    with torch.no_grad():
        model.conv1.weight.mul_(-1)
    model.save_pretrained(tmp_path / "m")
    second = push_to_hub(str(tmp_path / "m"), "org/tiny")
    data = (load_image_dataset("embedded:digits", "train").subset(range(32)),
            load_image_dataset("embedded:digits", "test").subset(range(16)))
    options = dict(protocols="slf", dataset=data, out_dir=tmp_path / "results", metrics="clean",
                   protocol_overrides={"epochs": 1}, progress=False, print_table=False, device="cpu")
    (latest,) = evaluate("org/tiny", **options)
    (pinned,) = evaluate("org/tiny", revision=first, **options)
    assert latest["model"]["revision"] == second and pinned["model"]["revision"] == first
    assert latest["model"]["weights_sha256"] != pinned["model"]["weights_sha256"]
    assert latest["model"]["id"] == "org/tiny"
