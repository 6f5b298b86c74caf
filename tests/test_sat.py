"""Supervised adversarial training (trainers/sat.py): losses, RCS with classifier-layer gradients, the
launch as documented, and a classifier the evaluation suite scores as it is."""

import contextlib
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import robust_hub
from robust_hub.config import load_config
from robust_hub.coreset import budget_batches, select_coreset
from robust_hub.data import load_image_dataset
from robust_hub.errors import RobustHubError
from robust_hub.models import create_backbone
from robust_hub.training.sat import PGDAT, SAT_METHODS, TRADES

from test_pretrain import ACCELERATE, ENV, QUICK, REPO, run

SAT_SCRIPT = str(REPO / "trainers" / "sat.py")


def sat_config(*overrides):
    return load_config(None, ["model.arch=robust_resnet_tiny", "model.dual_bn=false", "data.image_size=16",
                              "train.batch_size=8", "attack.steps=1", "train.epochs=4", "train.warmup_epochs=1",
                              "method.name=pgd_at", "coreset.mode=rcs", "coreset.warmup_epochs=0",
                              "coreset.fraction=0.25", *overrides])


def classifier(seed=0):
    torch.manual_seed(seed)
    return create_backbone("robust_resnet_tiny", dual_bn=False, proj_layers=0, num_classes=4)


def test_trades_and_pgd_at_losses_follow_their_formulas():
    model = classifier().eval()
    x, x_adv, y = torch.rand(6, 3, 16, 16), torch.rand(6, 3, 16, 16), torch.randint(0, 4, (6,))
    logits, logits_adv = model(x), model(x_adv)
    p = logits.softmax(1)
    kl = (p * (p.log() - logits_adv.log_softmax(1))).sum(1).mean()
    expected_trades = F.cross_entropy(logits, y) + 6.0 * kl
    config = sat_config("method.name=trades")
    trades = TRADES(config).loss(model, x, x_adv, y)
    assert trades.total.item() == pytest.approx(expected_trades.item(), rel=1e-5)
    assert trades.parts["nat_ce"].item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert trades.parts["robust_kl"].item() == pytest.approx(6.0 * kl.item(), rel=1e-4, abs=1e-6)
    pgd_at = PGDAT(config).loss(model, x, x_adv, y)
    assert pgd_at.total.item() == pytest.approx(F.cross_entropy(logits_adv, y).item(), rel=1e-5)


def test_pgd_at_attack_stays_in_the_ball_and_raises_the_loss():
    model = classifier().eval()
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 4, (8,))
    config = sat_config("attack.steps=5", "attack.alpha=2/255")
    x_adv = PGDAT(config).adversarial(model, x, y, contextlib.nullcontext)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


def supervised_problem():
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 3, 16, 16, generator=generator) * 255).to(torch.uint8)
    labels = torch.randint(0, 4, (64,), generator=generator)
    val = (torch.rand(12, 3, 16, 16, generator=generator) * 255).to(torch.uint8)
    return classifier(), images, labels, val


def test_sat_rcs_uses_classifier_gradients_and_agrees_with_exact_when_only_the_classifier_trains():
    config = sat_config("coreset.fraction=0.4")
    model, images, labels, val = supervised_problem()
    method = SAT_METHODS["pgd_at"](config)
    approx = select_coreset(model, method, config, 0, images, val, labels=labels)
    assert approx.indices.numel() == budget_batches(64, 0.4, 8) * 8 and approx.indices.unique().numel() == 24
    assert torch.equal(approx.indices, select_coreset(model, method, config, 0, images, val, labels=labels).indices)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("head."))
    exact_config = dataclasses.replace(config, coreset=dataclasses.replace(config.coreset, approximation="full"))
    exact = select_coreset(model, method, exact_config, 0, images, val, labels=labels)
    assert torch.equal(approx.indices, exact.indices)
    assert exact.gains == pytest.approx(approx.gains, rel=1e-4)
    # Labels matter: the classifier-layer gradients are those of CE on the given labels.
    other = select_coreset(model, method, config, 0, images, val, labels=(labels + 1) % 4)
    assert other.gains != pytest.approx(approx.gains, rel=1e-4)
    with pytest.raises(ValueError, match="labels"):
        select_coreset(model, method, config, 0, images, val)


def test_methods_belong_to_their_trainer(tmp_path):
    result = subprocess.run([sys.executable, SAT_SCRIPT, *QUICK, f"train.output_dir={tmp_path / 'a'}"],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "not a sat method" in result.stderr and not (tmp_path / "a").exists()
    result = run([*QUICK, "method.name=trades", f"train.output_dir={tmp_path / 'b'}"])
    assert result.returncode == 2 and "not a pretrain method" in result.stderr and not (tmp_path / "b").exists()
    with pytest.raises(RobustHubError, match="method.name"):
        sat_config("method.name=madry")


@pytest.mark.slow
def test_sat_with_rcs_by_accelerate_launch_writes_a_classifier_the_suite_scores_as_is(tmp_path):
    out = tmp_path / "sat"
    command = [ACCELERATE, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", SAT_SCRIPT, *QUICK, "method.name=trades", "model.dual_bn=false",
               "data.image_size=8", "train.lr=0.1", "coreset.mode=rcs", "coreset.fraction=0.1",
               "coreset.warmup_epochs=1", "coreset.interval=1", f"train.output_dir={out}"]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(f"model written to {out / 'model'}")
    assert result.stderr.count("coreset (rcs) for epoch") == 2
    model = robust_hub.from_pretrained(str(out / "model")).eval()
    assert model.num_classes == 10 and model.projector is None
    training = json.loads((out / "model" / "config.json").read_text())["robust_hub"]["training"]
    assert training["config"]["method"]["name"] == "trades" and len(training["coreset_selections"]) == 2
    card = (out / "model" / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "logits over 10 classes" in card

    scores = tmp_path / "eval"
    result = subprocess.run([sys.executable, "-m", "robust_hub.cli", "eval", str(out / "model"), "--protocols", "own",
                             "--metrics", "clean,pgd20", "--dataset", "embedded:digits", "--n-test", "120",
                             "--out", str(scores), "--no-progress"], env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (record_file,) = scores.glob("*.json")
    metrics = json.loads(record_file.read_text())["metrics"]
    # Independently: the saved model's own predictions on the same 120 test images, at its input size.
    test = load_image_dataset("embedded:digits", "test", image_size=None)
    x = test.images[:120].float().div(255)
    x = F.interpolate(x, size=tuple(model.pretrained_cfg["input_size"][1:]), mode="bilinear", align_corners=False) \
        if tuple(x.shape[-2:]) != tuple(model.pretrained_cfg["input_size"][1:]) else x
    with torch.no_grad():
        expected = (model(x).argmax(1) == test.labels[:120]).float().mean().item()
    assert metrics["clean_acc"] == pytest.approx(expected, abs=1e-6)
    assert metrics["pgd20_acc"] <= metrics["clean_acc"]


def test_own_protocol_refuses_a_backbone_without_a_classifier(tmp_path):
    backbone = create_backbone("robust_resnet_tiny", dual_bn=True, proj_layers=3)
    backbone.save_pretrained(str(tmp_path / "backbone"))
    result = subprocess.run([sys.executable, "-m", "robust_hub.cli", "eval", str(tmp_path / "backbone"), "--protocols",
                             "own", "--metrics", "clean", "--dataset", "embedded:digits", "--n-test", "20",
                             "--out", str(tmp_path / "eval"), "--no-progress"], env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "no classifier head" in result.stderr


def test_an_unlabelled_dataset_is_refused_before_training(tmp_path):
    import datasets
    import numpy as np

    from test_data import _parquet

    images = [np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(80)]
    _parquet(tmp_path / "data" / "train-00000-of-00001.parquet", {"img": images}, {"img": datasets.Image()})
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, SAT_SCRIPT, *QUICK, "method.name=pgd_at", "model.dual_bn=false",
                             f"data.source={tmp_path / 'data'}", f"train.output_dir={out}"],
                            env=ENV, capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1 and "needs a labelled dataset" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "checkpoints").exists() and not (out / "model").exists()
