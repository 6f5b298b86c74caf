"""The method plug-ins: DynACL's schedules, the IR loss terms, and every combination in the one loop."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import robust_hub
from robust_hub import RobustHubError
from robust_hub.config import load_config
from robust_hub.training import methods as methods_module
from robust_hub.training.loop import pretrain
from robust_hub.training.methods import METHODS
from test_losses import divergence_by_loops, nt_xent_by_loops, pair_scores, softmax_by_loops

REPO = Path(__file__).resolve().parents[1]
OFFLINE = REPO / "configs" / "offline.yaml"
# A few seconds of real training: tiny dual-BN ResNet, 16x16 digits, PGD-1.
QUICK = ["data.image_size=16", "train.batch_size=16", "attack.steps=1", "train.max_steps_per_epoch=1",
         "train.warmup_epochs=0", "train.checkpoint_every=0", "train.log_every=1", "train.lr=0.5"]
COMBINATIONS = {"acl": ["method.name=acl"], "acl+ir": ["method.name=acl", "method.ir=true"],
                "dynacl": ["method.name=dynacl"], "dynacl+ir": ["method.name=dynacl", "method.ir=true"]}


def dynacl_by_formula(epoch_1based: int, total: int, period: int = 50) -> tuple[float, float]:
    s = 1 - math.floor((epoch_1based - 1) / period) * period / total
    return s, 2 / 3 * (1 - s)


@pytest.mark.parametrize("epoch", [1, 50, 51, 100, 101, 999, 1000])
def test_dynacl_schedule_at_the_boundary_epochs(epoch):
    method = METHODS["dynacl"](load_config(None, ["method.name=dynacl"]))
    s, w = dynacl_by_formula(epoch, 1000)
    assert method.strength(epoch - 1) == pytest.approx(s, abs=1e-12)  # the hooks take 0-based epochs
    assert method.adv_weight(epoch - 1) == pytest.approx(w, abs=1e-12)
    assert (method.strength(0), method.adv_weight(0)) == (1.0, 0.0)  # epoch 1: ACL's setting
    assert method.strength(49) == 1.0 and method.strength(50) == pytest.approx(0.95)  # changes at epoch 51
    assert method.strength(999) == pytest.approx(0.05) and method.adv_weight(999) == pytest.approx(0.95 * 2 / 3)


def test_acl_keeps_its_configured_strength_and_dynacl_refuses_fixed_values():
    acl = METHODS["acl"](load_config(None, ["method.strength=0.5", "method.adv_weight=0.2"]))
    assert (acl.strength(700), acl.adv_weight(700)) == (0.5, 0.2)
    with pytest.raises(RobustHubError, match="scheduled by DynACL"):
        load_config(None, ["method.name=dynacl", "method.strength=0.5"])
    with pytest.raises(RobustHubError, match="ir_divergence"):
        load_config(None, ["method.ir_divergence=kl"])


class Embedder(torch.nn.Module):
    """A stand-in model with the backbone's call signature: a different linear map per route."""

    def __init__(self):
        super().__init__()
        self.normal, self.pgd = torch.nn.Linear(12, 5), torch.nn.Linear(12, 5)

    def forward(self, x, route=None, project=False):
        return getattr(self, route)(x.flatten(1))


@pytest.mark.parametrize("name,ir,kind", [("acl", False, "reference"), ("dynacl", False, "reference"),
                                          ("acl", True, "reference"), ("dynacl", True, "paper")])
def test_loss_is_the_formula_and_the_sum_of_its_parts(name, ir, kind):
    config = load_config(None, [f"method.name={name}", f"method.ir={str(ir).lower()}", f"method.ir_divergence={kind}",
                                "method.sir_weight=0.3", "method.air_weight=0.7", "train.epochs=100",
                                "method.schedule_period=10"])
    method, model, epoch = METHODS[name](config), Embedder(), 37  # DynACL: s = 0.7, w = 0.2
    views, adversarial = (torch.rand(4, 3, 2, 2), torch.rand(4, 3, 2, 2)), (torch.rand(4, 3, 2, 2), torch.rand(4, 3, 2, 2))
    original = torch.rand(4, 3, 2, 2)
    terms = method.loss(model, views, adversarial, epoch, original=original)
    assert terms.total.item() == pytest.approx(sum(v.item() for v in terms.parts.values()), rel=1e-6)

    with torch.no_grad():
        z_i, z_j = (model(v, "normal") for v in views)
        a_i, a_j = (model(v, "pgd") for v in adversarial)
        z_o = model(original, "normal")
    w = 0.2 if name == "dynacl" else 0.0
    nat, adv = (1 - w) * nt_xent_by_loops(z_i, z_j, 0.5), (1 + w) * nt_xent_by_loops(a_i, a_j, 0.5)
    if not ir:
        assert sorted(terms.parts) == ["adv", "nat"]
        assert terms.total.item() == pytest.approx((nat + adv) / 2, rel=1e-5)
        return
    p_i, p_j = (softmax_by_loops(pair_scores(z, z_o, 0.5)) for z in (z_i, z_j))
    big_p = [[x * y for x, y in zip(softmax_by_loops(pair_scores(a, z_o, 0.5)), softmax_by_loops(pair_scores(a, z, 0.5)))]
             for a, z in ((a_i, z_i), (a_j, z_j))]
    sir, air = divergence_by_loops(p_i, p_j, kind), divergence_by_loops(*big_p, kind)
    assert sorted(terms.parts) == ["adv", "air", "nat", "sir"]
    assert terms.parts["sir"].item() == pytest.approx(0.3 * sir, rel=1e-5, abs=1e-7)
    assert terms.parts["air"].item() == pytest.approx(0.7 * air, rel=1e-5, abs=1e-7)
    assert terms.total.item() == pytest.approx(nat + adv + 0.3 * sir + 0.7 * air, rel=1e-5)  # no /2 with IR


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(next((run_dir / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_each_combination_trains_two_steps_and_logs_its_terms(tmp_path, combination):
    out = tmp_path / combination
    config = load_config(OFFLINE, [*QUICK, *COMBINATIONS[combination], "train.epochs=2", f"train.output_dir={out}"])
    result = pretrain(config)
    model = robust_hub.from_pretrained(str(result.model_dir))
    assert model.hub_config["robust_hub"]["training"]["config"]["method"]["ir"] == ("ir" in combination)
    logged = scalars(out)
    parts = ["nat", "adv", "sir", "air"] if "ir" in combination else ["nat", "adv"]
    assert {f"train/loss_{p}" for p in ["nat", "adv", "sir", "air"]} & set(logged) == {f"train/loss_{p}" for p in parts}
    for step, total in logged["train/loss"]:  # the logged parts add up to the logged loss, step by step
        assert total == pytest.approx(sum(dict(logged[f"train/loss_{p}"])[step] for p in parts), rel=1e-5)
    assert [s for s, _ in logged["train/loss"]] == [1, 2]
    card = (result.model_dir / "README.md").read_text()
    assert ("DynACL" in card) == combination.startswith("dynacl") and ("SIR + AIR" in card) == ("ir" in combination)
    if "ir" in combination:
        assert "divergence: reference" in card


def test_dynacl_resumed_mid_schedule_uses_the_right_strength_and_ends_identical(tmp_path, monkeypatch):
    used: list[tuple[int, float, float]] = []
    original_loss = methods_module.ACL.loss

    def spy(self, model, views, adversarial, epoch, original=None):
        used.append((epoch, self.strength(epoch), self.adv_weight(epoch)))
        return original_loss(self, model, views, adversarial, epoch, original=original)

    monkeypatch.setattr(methods_module.ACL, "loss", spy)
    strengths: list[float] = []
    real_augment = robust_hub.training.loop.SimCLRAugment
    monkeypatch.setattr(robust_hub.training.loop, "SimCLRAugment",
                        lambda strength, size: strengths.append(strength) or real_augment(strength, size))
    common = [*QUICK, *COMBINATIONS["dynacl+ir"], "train.epochs=4", "method.schedule_period=2",
              "train.checkpoint_every=1", "train.keep_checkpoints=10"]
    straight = tmp_path / "straight"
    pretrain(load_config(OFFLINE, [*common, f"train.output_dir={straight}"]))
    expected = [dynacl_by_formula(e, 4, 2)[0] for e in (1, 2, 3, 4)]  # 1, 1, 0.5, 0.5
    assert strengths == pytest.approx(expected) and expected == [1, 1, 0.5, 0.5]

    # resume a copy of the run from its checkpoint after epoch 1 (inside the first stage)
    resumed = tmp_path / "resumed"
    first = sorted((straight / "checkpoints").iterdir())[0]
    assert json.loads((first / "progress.json").read_text())["epoch"] == 1
    strengths.clear(), used.clear()
    pretrain(load_config(OFFLINE, [*common, f"train.output_dir={resumed}"]), resume=str(first))
    assert strengths == pytest.approx(expected[1:])
    assert [(e, s, w) for e, s, w in used] == [(e - 1, *map(pytest.approx, dynacl_by_formula(e, 4, 2))) for e in (2, 3, 4)]
    a, b = (load_file(d / "model" / "model.safetensors") for d in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run left the schedule"


@pytest.mark.parametrize("name", ["acl", "dynacl"])
def test_the_attack_maximises_nt_xent_at_the_configured_temperature_through_the_pgd_route(name, monkeypatch):
    from contextlib import nullcontext

    from robust_hub.config import MethodConfig, RunConfig

    model = robust_hub.create_backbone("robust_resnet_tiny").train()
    routes, temperatures = [], []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, route=None, project=False: routes.append(route) or
                        forward(x, route=route, project=project))
    real = methods_module.nt_xent
    monkeypatch.setattr(methods_module, "nt_xent", lambda a, b, temperature=0.5: temperatures.append(temperature)
                        or real(a, b, temperature=temperature))
    method = METHODS[name](RunConfig(method=MethodConfig(name=name, temperature=0.2)))
    method.attack(model, torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), nullcontext)
    steps = method.config.attack.steps
    assert routes == ["pgd"] * steps and temperatures == [0.2] * steps
