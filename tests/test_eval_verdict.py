"""Robust numbers are earned: models whose robustness is an attack artefact are flagged and withheld."""

import logging

import pytest
import torch
from test_eval_helpers import RoundingBackbone, TinyBackbone, synthetic_split, trained_classifier

from robust_hub.evaluation import evaluate
from robust_hub.evaluation.autoattack_runner import run_autoattack
from robust_hub.evaluation.verdict import Measurement, decide


class SaturatedBackbone(TinyBackbone):
    """Huge features: the trained head's softmax saturates, so cross-entropy has no gradient (the margin has)."""

    def forward(self, x):
        return 1e4 * super().forward(x)


class NoisyBackbone(TinyBackbone):
    """A stochastic defence: fresh input noise on every call."""

    def forward(self, x):
        return super().forward((x + 0.05 * torch.randn_like(x)).clamp(0, 1))


class ShatteredBackbone(TinyBackbone):
    """Shattered gradients: a tiny high-frequency wiggle makes input gradients point anywhere."""

    def forward(self, x):
        return super().forward(x + 0.02 * torch.sin(2000 * x))


@pytest.fixture(scope="module")
def data():
    return synthetic_split(64, "train", 0), synthetic_split(20, "test", 1)


@pytest.mark.parametrize("backbone,expected,pgd_fooled", [
    (SaturatedBackbone, {"masked_ce_gradients", "pgd20_above_autoattack"}, True),
    (NoisyBackbone, {"randomized_defense"}, False),
    (ShatteredBackbone, {"square_beats_white_box", "pgd20_above_autoattack"}, True),
    (RoundingBackbone, {"masked_gradients"}, True),
])
def test_fake_robust_models_are_flagged_and_never_published_above_autoattack(backbone, expected, pgd_fooled, data,
                                                                              tmp_path):
    logging.disable(logging.CRITICAL)  # a program that silences logging still gets every flag
    try:
        (record,) = evaluate(backbone(), protocols="slf", dataset=data, out_dir=tmp_path, eps=16 / 255,
                             metrics="clean,pgd20,autoattack", progress=False, print_table=False, device="cpu",
                             protocol_overrides={"epochs": 5, "batch_size": 16, "augment": False, "lr": 0.5},
                             attack_masked_models=True)
    finally:
        logging.disable(logging.NOTSET)
    m = record["metrics"]
    assert expected <= set(record["flags"]) and "robust_acc_withheld" in record["flags"]
    assert m["pgd20_acc"] is None  # PGD-20 was misled in every one of these models
    if pgd_fooled:  # ... and would have looked robust
        assert m["untrusted"]["pgd20_acc"] > m["clean_acc"] / 2
    autoattack = m["autoattack_acc"] if m["autoattack_acc"] is not None else m["untrusted"]["autoattack_acc"]
    published = [v for v in (m["pgd20_acc"], m["autoattack_acc"], m["robust_acc"]) if v is not None]
    assert all(v <= autoattack for v in published)


def test_autoattack_flags_survive_disabled_logging():
    train, test = synthetic_split(64, "train", 0), synthetic_split(2, "test", 1)
    model = trained_classifier(RoundingBackbone(), train)
    logging.disable(logging.CRITICAL)
    try:
        res = run_autoattack(model, test.images.float() / 255, test.labels, eps=8 / 255, seed=0, progress=False)
    finally:
        logging.disable(logging.NOTSET)
    assert "zero_gradients" in res.flags and any("zero gradient" in m for m in res.messages)


def pgd(value, n):
    correct = [True] * round(value * n) + [False] * (n - round(value * n))
    return Measurement(value, [], {"correct": correct})


def aa(value, n, flags=()):
    return Measurement(value, list(flags), {"n": n, "messages": []})


GRADS = Measurement({"margin": 0.0, "cross_entropy": 0.0})


def test_verdict_publishes_honest_numbers_and_the_strongest_as_headline():
    metrics, flags = decide({"gradients": GRADS, "clean": Measurement(0.9), "pgd20": pgd(0.5, 100), "autoattack": aa(0.45, 100)})
    assert (metrics["pgd20_acc"], metrics["autoattack_acc"], metrics["robust_acc"]) == (0.5, 0.45, 0.45)
    assert flags == [] and "untrusted" not in metrics


@pytest.mark.parametrize("pgd_value,withheld", [(0.54, False), (0.56, True), (0.9, True)])
def test_pgd_well_above_autoattack_is_withheld(pgd_value, withheld):
    metrics, flags = decide({"gradients": GRADS, "pgd20": pgd(pgd_value, 1000), "autoattack": aa(0.45, 1000)})
    assert ("pgd20_above_autoattack" in flags) == withheld
    assert (metrics["pgd20_acc"] is None) == withheld and metrics["robust_acc"] == 0.45


def test_pgd_and_autoattack_are_compared_on_the_same_images():
    # PGD-20 holds on the 10 images AutoAttack ran, fails on the other 90: far above AutoAttack there
    correct = [True] * 10 + [False] * 90
    metrics, flags = decide({"gradients": GRADS, "pgd20": Measurement(0.1, [], {"correct": correct}),
                             "autoattack": aa(0.2, 10)})
    assert "pgd20_above_autoattack" in flags and metrics["pgd20_acc"] is None


@pytest.mark.parametrize("flag,withheld", [
    ("masked_ce_gradients", {"pgd20_acc"}), ("square_beats_white_box", {"pgd20_acc"}),
    ("randomized_defense", {"pgd20_acc", "autoattack_acc"}), ("masked_gradients", {"pgd20_acc", "autoattack_acc"}),
])
def test_each_misleading_sign_withholds_the_attacks_it_misleads(flag, withheld):
    metrics, flags = decide({"gradients": Measurement(GRADS.value, [flag] if "masked" in flag else []),
                             "pgd20": pgd(0.4, 10), "autoattack": aa(0.4, 10, [] if "masked" in flag else [flag])})
    assert {k for k in ("pgd20_acc", "autoattack_acc") if metrics[k] is None} == withheld
    assert flag in flags and "robust_acc_withheld" in flags and set(metrics["untrusted"]) == withheld


class ClampedBackbone(TinyBackbone):
    """The same weights as TinyBackbone, plus a non-parametric layer: a different model."""

    def forward(self, x):
        return super().forward(x).clamp(max=0.05)


def test_a_record_identity_covers_the_whole_model_not_only_its_weights(data, tmp_path):
    from robust_hub.evaluation.loading import wrap_module

    plain, clamped = TinyBackbone(), ClampedBackbone()
    assert plain.state_dict().keys() == clamped.state_dict().keys()
    assert all(torch.equal(plain.state_dict()[k], clamped.state_dict()[k]) for k in plain.state_dict())
    assert wrap_module(plain).info.revision != wrap_module(clamped).info.revision
    opts = dict(protocols="slf", dataset=data, out_dir=tmp_path, metrics="clean", progress=False, print_table=False,
                device="cpu", protocol_overrides={"epochs": 1, "batch_size": 16, "augment": False})
    (first,) = evaluate(plain, **opts)
    (second,) = evaluate(clamped, **opts)  # the same --out: a record of its own, not the plain model's
    assert second["model"]["revision"] != first["model"]["revision"]
    assert len(list(tmp_path.glob("*.json"))) == 2


class FlatMarginModel(torch.nn.Module):
    """Logits (g + 1, g, g - 0.5 + 0.4 h): class 0 wins by exactly 1 everywhere, so the margin has no input
    gradient, while cross-entropy has one through the third logit (its probability is far from 0)."""

    def forward(self, x):
        g, h = 0.01 * x.flatten(1).sum(1), x.flatten(1).mean(1)
        return torch.stack([g + 1, g, g - 0.5 + 0.4 * h], dim=1)


class SaturatedModel(torch.nn.Module):
    """Logits (1e4 (1 + mean x), 0, 0): softmax is exactly one-hot in float32, so cross-entropy has no input
    gradient, while the margin has one."""

    def forward(self, x):
        z = 1e4 * (1 + x.flatten(1).mean(1))
        return torch.stack([z, torch.zeros_like(z), torch.zeros_like(z)], dim=1)


@pytest.mark.parametrize("model,fractions,flags", [
    (FlatMarginModel(), {"margin": 1.0, "cross_entropy": 0.0}, ["masked_gradients"]),
    (SaturatedModel(), {"margin": 0.0, "cross_entropy": 1.0}, ["masked_ce_gradients"]),
])
def test_each_masked_gradient_flag_comes_from_its_own_loss(model, fractions, flags):
    from robust_hub.evaluation.attacks import input_gradient_norms, margin_input_gradient_norms
    from robust_hub.evaluation.verdict import measure_gradients

    x, y = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(0)), torch.zeros(6, dtype=torch.long)
    # the premise, checked with the gradients written out: exactly one of the two losses is flat
    ce = input_gradient_norms(model, x, lambda z: torch.nn.functional.cross_entropy(z, y, reduction="sum"))
    assert ((margin_input_gradient_norms(model, x, y) == 0).all().item(), (ce == 0).all().item()) == (
        fractions["margin"] == 1.0, fractions["cross_entropy"] == 1.0)
    measured = measure_gradients(model, x, y)
    assert measured.value == fractions and measured.flags == flags


@pytest.mark.parametrize("curve_attack", ["pgd20", "autoattack"])
@pytest.mark.parametrize("sign", ["masked_gradients", "masked_ce_gradients", "randomized_defense",
                                  "square_beats_white_box", "pgd20_above_autoattack"])
def test_the_eps_curve_is_withheld_exactly_when_the_attack_that_drew_it_is(sign, curve_attack):
    gradients = Measurement(GRADS.value, [sign] if sign.startswith("masked") else [])
    autoattack = aa(0.4, 10, [sign] if sign in ("randomized_defense", "square_beats_white_box") else [])
    curve = Measurement({curve_attack: {"0.0156863": 0.5, "0.0313725": 0.3}})
    metrics, flags = decide({"gradients": gradients, "pgd20": pgd(0.9 if sign == "pgd20_above_autoattack" else 0.4, 10),
                             "autoattack": autoattack, "eps_curve": curve}, eps_curve_attack=curve_attack)
    withheld_attacks = {name for name in ("pgd20", "autoattack") if metrics[f"{name}_acc"] is None}
    assert sign in flags and withheld_attacks  # every one of these signs misleads at least one attack
    assert (metrics["eps_curve"] is None) == (curve_attack in withheld_attacks)
    if curve_attack in withheld_attacks:
        assert metrics["untrusted"]["eps_curve"] == curve.value and metrics["withheld_because"]["eps_curve"] == sign
