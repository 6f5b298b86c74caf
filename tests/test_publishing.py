"""What a pushed model's card holds: recipe, data fingerprint, results (table, model-index, .eval_results), plots."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

import robust_hub
from robust_hub.config import load_config
from robust_hub.evaluation.runner import evaluate
from robust_hub.hub_push import push_to_hub
from robust_hub.training.loop import pretrain

from leaderboard_helpers import fast_settings

REPO = Path(__file__).resolve().parents[1]
QUICK = ["data.image_size=16", "train.batch_size=32", "attack.steps=1", "train.max_steps_per_epoch=2", "train.epochs=2",
         "train.warmup_epochs=1", "train.checkpoint_every=0", "train.lr=0.5"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.usefixtures("one_torch_thread")
def test_train_push_to_hub_publishes_the_recipe_and_training_curve(hub, tmp_path):
    config = load_config(REPO / "configs" / "offline.yaml",
                         [*QUICK, f"train.output_dir={tmp_path / 'run'}", "train.push_to_hub=org/trained"])
    result = pretrain(config)
    files = hub.files_at("org/trained")
    assert files["model.safetensors"] == (result.model_dir / "model.safetensors").read_bytes()
    card = files["README.md"].decode()
    fingerprint = json.loads((tmp_path / "run" / "environment.json").read_text())["data"]["fingerprint"]
    assert fingerprint and f"fingerprint `{fingerprint}`" in card
    for key, value in (("method.name", "acl"), ("attack.steps", "1"), ("train.epochs", "2"), ("data.image_size", "16")):
        assert f"| `{key}` | `{value}` |" in card
    assert "| epochs | 2 |" in card and "process(es) on CPU" in card
    assert files["plots/training_loss.png"].startswith(PNG) and "](plots/training_loss.png)" in card
    assert 'robust_hub.from_pretrained("org/trained")' in card and 'AutoModel.from_pretrained("org/trained")' in card


def test_results_reach_table_model_index_eval_results_and_plots(hub, tmp_path):
    torch.manual_seed(0)
    model = robust_hub.create_backbone("robust_resnet_tiny")
    extra = {"training": {"config": {"method": {"name": "dynacl"}, "ir": {"weight_sir": 0.5}, "rcs": {"fraction": 0.2}}}}
    model.save_pretrained(tmp_path / "m", metadata=extra)
    (rec,) = evaluate(str(tmp_path / "m"), protocols="slf", dataset=fast_settings().dataset, out_dir=tmp_path / "r",
                      metrics="clean,pgd20,c10c", eps_curve=[2 / 255, 8 / 255], c10c_generate=True,
                      c10c_n_per_severity=4, protocol_overrides={"epochs": 1}, progress=False, print_table=False,
                      device="cpu")
    sha = push_to_hub(str(tmp_path / "m"), "org/card", results=[str(tmp_path / "r")])
    repo = hub.get_repo("org/card")
    weights_commit = repo.commits[sha].parent
    files = hub.files_at("org/card")
    card = files["README.md"].decode()

    # recipe: sections other developers add (IR, RCS) appear without code knowing them
    assert "| `ir.weight_sir` | `0.5` |" in card and "| `rcs.fraction` | `0.2` |" in card
    # the table, pinned to the commit that holds the weights
    m = rec["metrics"]
    assert f"| [`{weights_commit[:7]}`]" in card and "(these weights)" in card
    assert f"| {100 * m['clean_acc']:.2f} | {100 * m['pgd20_acc']:.2f} |" in card
    # model-index
    index = ModelCard.load("org/card").data.to_dict()["model-index"][0]["results"]
    values = {metric["name"].split(" (")[0]: metric["value"] for r in index for metric in r["metrics"]}
    assert values["clean accuracy"] == round(100 * m["clean_acc"], 2)
    assert values["PGD-20 robust accuracy"] == round(100 * m["pgd20_acc"], 2)
    assert values["CIFAR-10-C accuracy"] == round(100 * m["c10c"]["mean"], 2)
    # .eval_results: one file for the record, the same numbers as fractions
    (name,) = [f for f in files if f.startswith(".eval_results/")]
    entries = {e["dataset"]["task_id"]: e["value"] for e in yaml.safe_load(files[name])}
    # 1 finetuning epoch instead of the benchmark's 25: the task ids say so (16 of 16 test images)
    tag = "subset-test16-epochs1"
    assert entries == {f"slf-clean-linf-8-255-{tag}": m["clean_acc"], f"slf-pgd20-linf-8-255-{tag}": m["pgd20_acc"],
                       f"slf-c10c-linf-8-255-{tag}": m["c10c"]["mean"]}
    # plots: accuracy against eps and the corruption heatmap (no training curve: none was recorded)
    assert files["plots/accuracy_vs_eps.png"].startswith(PNG) and files["plots/cifar10c.png"].startswith(PNG)
    assert "plots/training_loss.png" not in files
    assert "](plots/accuracy_vs_eps.png)" in card and "](plots/cifar10c.png)" in card
