"""Every hyperparameter a user sets reaches the computation, with the effect its formula predicts.

These pin the holes planted bugs went through: a loss ignoring its temperature, a learning rate set
once per epoch, PGD-20 running fewer steps, AFF ignoring the TRADES beta, and (for the class) every
finetuning setting of the protocols.
"""

import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F
from test_eval_helpers import TinyBackbone, synthetic_split
from test_losses import nt_xent_by_loops
from test_pretrain import QUICK, run

from robust_hub.evaluation import evaluate
from robust_hub.evaluation.attacks import PGDConfig
from robust_hub.evaluation.protocols import Classifier, _loss, default_protocol_config, finetune, with_overrides
from robust_hub.losses import acl_loss


@pytest.mark.parametrize("t", [0.1, 0.2, 1.0])
def test_acl_loss_uses_its_temperature(t):
    clean = (torch.randn(4, 6), torch.randn(4, 6))
    adv = (torch.randn(4, 6), torch.randn(4, 6))
    expected = (nt_xent_by_loops(*clean, t) + nt_xent_by_loops(*adv, t)) / 2
    assert acl_loss(clean, adv, adv_weight=0.0, temperature=t).item() == pytest.approx(expected, rel=1e-5)


def test_the_method_passes_the_configured_temperature(tmp_path):
    from robust_hub.config import load_config
    from robust_hub.training.methods import METHODS

    z = [torch.randn(4, 6) for _ in range(4)]

    class Embed(torch.nn.Module):  # returns the fixed embeddings, whatever the views are
        calls = 0

        def forward(self, x, project=False, route=None):
            Embed.calls += 1
            return torch.cat(z[:2]) if Embed.calls % 2 else torch.cat(z[2:])

    for t in (0.1, 0.7):
        method = METHODS["acl"](load_config(None, [f"method.temperature={t}"]))
        Embed.calls = 0
        loss = method.loss(Embed(), (torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 8, 8)),
                           (torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 8, 8)), 0)
        expected = (nt_xent_by_loops(z[0], z[1], t) + nt_xent_by_loops(z[2], z[3], t)) / 2
        assert loss.total.item() == pytest.approx(expected, rel=1e-4)


def test_learning_rate_follows_progress_within_an_epoch(tmp_path):
    result = run([*QUICK, "train.epochs=2", f"train.output_dir={tmp_path / 'run'}"])
    assert result.returncode == 0, result.stderr[-2000:]
    lrs = {int(step): float(lr) for step, lr in re.findall(r"step (\d+) \(epoch 1\): loss \S+ \([^)]*\), lr (\S+)", result.stderr)}
    assert sorted(lrs) == [1, 2, 3, 4]
    # epoch 1 is the warm-up: the rate rises at every step of the epoch, not once per epoch
    assert lrs[1] < lrs[2] < lrs[3] < lrs[4]


def test_pgd20_takes_twenty_gradient_steps_of_eps_over_four(tmp_path, monkeypatch):
    import robust_hub.evaluation.runner as runner

    seen = []
    real = runner.pgd

    def spy(model, x, y, cfg):
        seen.append(cfg)
        calls = []
        handle = model.register_forward_pre_hook(lambda m, args: calls.append(args[0].requires_grad))
        try:
            return real(model, x, y, cfg)
        finally:
            handle.remove()
            seen.append(sum(calls))

    monkeypatch.setattr(runner, "pgd", spy)
    train, test = synthetic_split(32, "train", 0), synthetic_split(8, "test", 1)
    evaluate(TinyBackbone(), protocols="slf", dataset=(train, test), out_dir=tmp_path, metrics="clean,pgd20",
             eps=4 / 255, progress=False, print_table=False, device="cpu",
             protocol_overrides={"epochs": 1, "batch_size": 16, "augment": False})
    cfg, gradient_calls = seen
    assert cfg.steps == 20 and cfg.alpha == pytest.approx(1 / 255) and cfg.eps == pytest.approx(4 / 255)
    assert gradient_calls == 20  # one input gradient per step, really taken


def test_aff_loss_is_ce_plus_beta_times_kl():
    torch.manual_seed(0)
    model = Classifier(TinyBackbone(), 32, 10).eval()
    x, y = torch.rand(6, 3, 16, 16), torch.arange(6)
    base = default_protocol_config("aff", "cifar10", eps=8 / 255)

    def loss(beta):
        torch.manual_seed(1)  # the same TRADES start for every beta
        value = _loss(dataclasses.replace(base, trades_beta=beta), model, x, y).item()
        model.eval()
        return value

    ce = F.cross_entropy(model(x), y).item()
    assert loss(0.0) == pytest.approx(ce, rel=1e-5)
    kl = loss(1.0) - ce
    assert kl > 0
    assert loss(6.0) == pytest.approx(ce + 6.0 * kl, rel=1e-4)


# every finetuning setting a user can override (--set KEY=VALUE), with a value that must change the result
SETTINGS = {"lr": 0.3, "epochs": 3, "batch_size": 8, "milestones": "5", "gamma": 0.5, "momentum": 0.5,
            "weight_decay": 0.05, "augment": True, "train_attack.steps": 1, "train_attack.eps": 2 / 255,
            "train_attack.alpha": 1 / 255, "trades_beta": 1.0, "trades_start_noise": 0.0, "first_epoch_lr": 0.2}


@pytest.mark.parametrize("key", sorted(SETTINGS))
def test_every_protocol_setting_changes_the_finetuned_model(key):
    train = synthetic_split(32, "train", 0)
    name = "aff" if key.startswith(("trades_", "train_attack")) else "slf"
    base = with_overrides(default_protocol_config(name, "cifar10"),
                          {"epochs": 2, "batch_size": 16, "augment": False, "lr": 0.05, "milestones": "1"})
    changed = with_overrides(base, {key: SETTINGS[key]})
    assert changed != base

    def head(cfg):
        model = finetune(TinyBackbone(), 32, train.images, train.labels, 10, cfg, seed=0, progress=False)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert not torch.allclose(head(base), head(changed))


class BatchNormBackbone(TinyBackbone):
    """TinyBackbone with a batch norm, so the mode it runs in shows in its running statistics."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.fc(torch.relu(self.bn(self.conv(x))).flatten(1)))


def test_the_protocol_defaults_are_method_mds_table():
    attack = PGDConfig(eps=8 / 255, alpha=2 / 255, steps=10, norm="linf", random_start=True)
    linear = {"epochs": 25, "lr": 0.01, "batch_size": 512, "milestones": (10, 20), "gamma": 0.1, "momentum": 0.9,
              "weight_decay": 2e-4}
    aff = {**linear, "lr": 0.1, "batch_size": 128, "milestones": (15, 20), "train_attack": attack,
           "trades_beta": 6.0, "trades_start_noise": 0.001}
    for name, expected in (("slf", {**linear, "train_attack": None}), ("alf", {**linear, "train_attack": attack}),
                           ("aff", aff)):
        cfg = dataclasses.asdict(default_protocol_config(name, "cifar10"))
        expected = {k: dataclasses.asdict(v) if isinstance(v, PGDConfig) else v for k, v in expected.items()}
        assert {k: cfg[k] for k in expected} == expected, name
    assert default_protocol_config("slf", "cifar100").lr == 0.05


@pytest.mark.parametrize("name", ["slf", "alf", "aff"])
def test_finetuning_attacks_run_in_eval_mode_and_linear_protocols_keep_the_encoders_statistics(name, monkeypatch):
    import robust_hub.evaluation.protocols as protocols

    modes = []

    def recording(attack):
        def run(model, *args, **kwargs):
            modes.append({m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)})
            return attack(model, *args, **kwargs)
        return run

    monkeypatch.setattr(protocols, "pgd", recording(protocols.pgd))
    monkeypatch.setattr(protocols, "trades_attack", recording(protocols.trades_attack))
    backbone = BatchNormBackbone()
    before = {k: v.clone() for k, v in backbone.bn.state_dict().items()}
    train = synthetic_split(16, "train", 0)
    cfg = with_overrides(default_protocol_config(name, "cifar10"), {"epochs": 1, "batch_size": 8})
    model = finetune(backbone, 32, train.images, train.labels, 10, cfg, seed=0, progress=False)
    assert len(modes) == (0 if name == "slf" else 2) and all(m == {False} for m in modes)
    after = model.encoder.bn.state_dict()
    kept = all(torch.equal(before[k], after[k]) for k in before)
    assert kept == (name != "aff")  # AFF trains the whole network, its batch norms included
