"""The fast training path: what ``auto`` resolves to, same loss as the plain path, one compile per
batch-norm route with no graph break, and losses read back at log time only."""

import math

import pytest
import torch
from accelerate.state import AcceleratorState
from torch._dynamo.utils import counters

import robust_hub
from robust_hub import RobustHubError
from robust_hub.config import AttackConfig, MethodConfig, RunConfig, SpeedConfig, TrainConfig, load_config
from robust_hub.losses import air_loss, nt_xent, sir_loss
from robust_hub.training import loop
from robust_hub.training.fast import DeviceLosses, FastPath
from robust_hub.training.methods import ACL, METHODS, LossTerms
from robust_hub.training.optim import build_optimizer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_is_on_for_cuda_and_mostly_off_for_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    on_cpu, on_cuda = FastPath.resolve(SpeedConfig(), CPU), FastPath.resolve(SpeedConfig(), CUDA)
    assert (on_cpu.bf16, on_cpu.channels_last, on_cpu.compile, on_cpu.foreach) == (False, True, False, None)
    assert (on_cuda.bf16, on_cuda.channels_last, on_cuda.compile, on_cuda.cuda_graphs) == (True, True, True, False)
    assert on_cpu.sync_free and on_cuda.sync_free
    forced = FastPath.resolve(SpeedConfig(bf16=True, compile=True, foreach=False), CPU)
    assert forced.bf16 and forced.compile and forced.foreach is False
    # Accelerate's own fp16 wins over the fast path's bf16; an explicit false switches a part off.
    assert not FastPath.resolve(SpeedConfig(), CUDA, mixed_precision="fp16").bf16
    assert not FastPath.resolve(SpeedConfig(channels_last=False), CUDA).channels_last


def test_cuda_graphs_on_a_cpu_is_an_error():
    with pytest.raises(RobustHubError, match="cuda_graphs=true needs a CUDA device"):
        FastPath.resolve(SpeedConfig(cuda_graphs=True), CPU)


@pytest.mark.parametrize("override,message", [
    ("speed.bf16=maybe", "speed.bf16 must be true, false or auto"),
    ("speed.compile=1", "speed.compile=1 should be of type str"),
    ("speed.sync_free=auto", "speed.sync_free='auto' should be of type bool"),
])
def test_bad_speed_values_are_rejected(override, message):
    with pytest.raises(RobustHubError, match=message):
        load_config(None, [override])


def test_speed_switches_parse_from_overrides():
    config = load_config(None, ["speed.compile=off", "speed.bf16=true", "speed.channels_last=auto"])
    assert (config.speed.compile, config.speed.bf16, config.speed.channels_last) == (False, True, "auto")
    with pytest.raises(RobustHubError, match="cuda_graphs=true needs speed.compile"):
        load_config(None, ["speed.cuda_graphs=true", "speed.compile=false"])


def test_optimizer_foreach_is_set_on_every_group():
    model = robust_hub.create_backbone("robust_resnet_tiny")
    optimizer = build_optimizer(model, RunConfig().train)
    FastPath(foreach=True).prepare_optimizer(optimizer)
    assert [g["foreach"] for g in optimizer.param_groups] == [True] * len(optimizer.param_groups)


ACL_CONFIG = RunConfig(attack=AttackConfig(steps=2))


def _step(fast: FastPath, config: RunConfig = ACL_CONFIG, epoch: int = 0, seed: int = 0):
    """One training step of ``config``'s method on a tiny model: adversarial views, the loss and its
    parts on fixed views, the loss of the attacked views, and the weights after the optimiser step
    on the fixed views' loss."""
    torch.manual_seed(seed)
    model = robust_hub.create_backbone("robust_resnet_tiny")
    fast.prepare_model(model)
    method = METHODS[config.method.name](config)
    optimizer = fast.prepare_optimizer(build_optimizer(model, config.train))
    generator = torch.Generator().manual_seed(seed + 1)
    views = [fast.images(torch.rand(16, 3, 16, 16, generator=generator)) for _ in range(5)]
    clean, original = (views[0], views[1]), views[4]  # original: the un-augmented images IR needs
    adversarial = method.attack(model, *clean, fast.autocast_factory())
    model.train()
    with fast.autocast():
        fixed = method.loss(model, clean, (views[2], views[3]), epoch, original=original)
        with torch.no_grad():
            loss = method.loss(model, clean, adversarial, epoch, original=original).total
    # The step is taken on the fixed views: on the attacked ones, the few pixels where the two
    # paths' PGD steps differ would set the tolerance of the weights rather than the step itself.
    optimizer.zero_grad(set_to_none=True)
    fixed.total.backward()
    optimizer.step()
    fixed_parts = {k: v.item() for k, v in fixed.parts.items()}
    return (torch.stack(adversarial), fixed.total.item(), loss.item(),
            {k: v.detach().clone() for k, v in model.state_dict().items()}, fixed_parts)


# Compiled with dynamo's eager backend: the same graph capture as inductor without minutes of
# C++ compilation on a CPU; numerics of inductor kernels are PyTorch's own business.
EXACT = FastPath(channels_last=True, compile=True, foreach=True, compile_backend="eager")


def _assert_same_step(plain, fast):
    plain_adv, plain_fixed, plain_loss, plain_weights, plain_parts = plain
    adv, fixed, loss, weights, parts = fast
    assert fixed == pytest.approx(plain_fixed, rel=1e-5)  # same inputs: the same loss to fp32 rounding
    assert parts.keys() == plain_parts.keys()
    assert all(parts[k] == pytest.approx(v, rel=1e-5, abs=1e-7) for k, v in plain_parts.items())
    # PGD takes the sign of the input gradient; a channels-last convolution sums in another order,
    # which flips the sign of a few near-zero components: a few pixels differ by one step.
    assert (adv - plain_adv).abs().le(1e-6).float().mean() > 0.98
    assert loss == pytest.approx(plain_loss, rel=5e-3)
    # The projector's fc1 bias feeds a batch norm: its true gradient is 0 and the computed one is
    # rounding noise, which the reference convention's trust ratio scales up to a step of
    # eta lr ||w|| in a noise direction (~1e-4 here). Every other weight agrees to rounding.
    noisy = {"projector.fc1.bias"}
    assert all(torch.allclose(weights[k].float(), v.float(), rtol=1e-4, atol=1e-3 if k in noisy else 2e-5)
               for k, v in plain_weights.items())
    assert any(not torch.equal(weights[k], v) for k, v in plain_weights.items())  # it did take another route


def test_fast_path_computes_the_plain_loss():
    plain = _step(FastPath())
    _assert_same_step(plain, _step(EXACT))
    plain_adv, plain_fixed, plain_loss = plain[:3]
    bf16_adv, bf16_fixed, bf16_loss = _step(FastPath(bf16=True, channels_last=True, compile=True, compile_backend="eager"))[:3]
    assert bf16_fixed != plain_fixed  # bf16 really ran...
    assert bf16_fixed == pytest.approx(plain_fixed, rel=1e-2)  # ...within bf16's ~3 significant digits
    assert bf16_loss == pytest.approx(plain_loss, rel=2e-2)
    assert (bf16_adv - plain_adv).abs().max() <= 2 * 8 / 255 + 1e-6  # both inside the eps-ball of the same views


@pytest.mark.parametrize("name,ir,convention", [("acl", True, "reference"), ("dynacl", False, "simclr"),
                                                ("dynacl", True, "reference")])
def test_fast_path_computes_the_plain_loss_for_every_method(name, ir, convention):
    # DynACL at epoch 2 of 4 with a stage per epoch: s = 1/2, w = 1/3, so both streams are weighted.
    config = RunConfig(attack=AttackConfig(steps=2), method=MethodConfig(name=name, ir=ir, schedule_period=1),
                       train=TrainConfig(epochs=4, warmup_epochs=0, lars_convention=convention))
    epoch = 2
    if name == "dynacl":
        assert METHODS[name](config).adv_weight(epoch) == pytest.approx(1 / 3)
    plain = _step(FastPath(), config, epoch)
    assert set(plain[4]) == ({"nat", "adv", "sir", "air"} if ir else {"nat", "adv"})
    _assert_same_step(plain, _step(EXACT, config, epoch))


def test_the_losses_stay_fp32_under_autocast():
    z_i, z_j = torch.randn(8, 16), torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = nt_xent(z_i, z_j)
    assert under_autocast.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(nt_xent(z_i, z_j).item(), rel=1e-6)
    a_i, a_j, z_o = torch.randn(8, 16), torch.randn(8, 16), torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sir, air = sir_loss(z_i, z_j, z_o), air_loss(a_i, a_j, z_i, z_j, z_o)
    assert sir.dtype == air.dtype == torch.float32
    assert sir.item() == pytest.approx(sir_loss(z_i, z_j, z_o).item(), rel=1e-6)
    assert air.item() == pytest.approx(air_loss(a_i, a_j, z_i, z_j, z_o).item(), rel=1e-6)


@pytest.mark.parametrize("ir", [False, True])
def test_compiled_model_has_no_graph_break_and_compiles_once_per_route(ir):
    torch._dynamo.reset()
    counters.clear()
    model = robust_hub.create_backbone("robust_resnet_tiny")
    FastPath(compile=True, compile_backend="eager").prepare_model(model)
    method = ACL(RunConfig(attack=AttackConfig(steps=1), method=MethodConfig(ir=ir)))
    frames_after_each_step = []
    for step in range(3):
        x_i, x_j, original = torch.rand(8, 3, 16, 16), torch.rand(8, 3, 16, 16), torch.rand(8, 3, 16, 16)
        adversarial = method.attack(model, x_i, x_j, FastPath().autocast_factory())  # eval mode, pgd route
        model.train()
        method.loss(model, (x_i, x_j), adversarial, epoch=0, original=original).total.backward()  # train mode
        frames_after_each_step.append(counters["frames"]["total"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    # (pgd, eval), (normal, train), (pgd, train): three graphs in the first step, none after. IR's
    # forward of the un-augmented images is half the batch of the views: one more graph, once.
    expected = 4 if ir else 3
    assert frames_after_each_step == [expected] * 3
    torch._dynamo.reset()


def test_device_losses_are_read_back_exactly_and_in_order():
    losses = DeviceLosses()
    values = [1.25, 0.5, float("nan")]
    for v in values:
        losses.add(torch.tensor(v, dtype=torch.float64), {"nat": torch.tensor(v / 4), "adv": torch.tensor(3 * v / 4)})
    read = losses.read(lambda t: t * 2)
    assert read[:2] == [(2.5, {"nat": 0.625, "adv": 1.875}), (1.0, {"nat": 0.25, "adv": 0.75})]
    assert math.isnan(read[2][0]) and len(losses) == 0 and losses.read(lambda t: t) == []
    losses.add(torch.tensor(1.0), {"nat": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="loss parts changed"):
        losses.add(torch.tensor(1.0), {"sir": torch.tensor(1.0)})


@pytest.mark.parametrize("sync_free,steps_before_error", [(True, 4), (False, 3)])
def test_a_nan_loss_is_caught_at_log_time_when_sync_free(tmp_path, monkeypatch, sync_free, steps_before_error):
    calls = []
    real_loss = ACL.loss

    def loss_that_breaks_at_step_3(self, *args, **kwargs):
        calls.append(1)
        terms = real_loss(self, *args, **kwargs)
        return LossTerms(terms.total * float("nan"), terms.parts) if len(calls) == 3 else terms

    monkeypatch.setattr(ACL, "loss", loss_that_breaks_at_step_3)
    config = load_config(None, ["model.arch=robust_resnet_tiny", "data.image_size=16", "train.batch_size=32",
                                "attack.steps=1", "train.epochs=2", "train.warmup_epochs=0", "train.log_every=2",
                                "train.checkpoint_every=0", f"speed.sync_free={str(sync_free).lower()}",
                                f"train.output_dir={tmp_path / 'run'}"])
    AcceleratorState._reset_state(True)
    try:
        with pytest.raises(RobustHubError, match="training loss became nan at epoch 1 step 3"):
            loop.pretrain(config)
    finally:
        AcceleratorState._reset_state(True)
    assert len(calls) == steps_before_error  # sync-free: noticed at the next read, not at the step


def _nt_xent64(a: torch.Tensor, b: torch.Tensor, t: float) -> float:
    """NT-Xent written out in float64: mean over the 2N rows of -log softmax(similarities / t)[positive]."""
    z = torch.cat([a, b]).double()
    z = z / z.norm(dim=1, keepdim=True)
    s = z @ z.T / t
    n = a.shape[0]
    rows = []
    for r in range(2 * n):
        others = torch.cat([s[r, :r], s[r, r + 1:]])
        rows.append(torch.logsumexp(others, 0) - s[r, (r + n) % (2 * n)])
    return torch.stack(rows).mean().item()


def _log_p64(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    a, b = (x.double() / x.double().norm(dim=1, keepdim=True) for x in (a, b))
    return torch.log_softmax((a * b).sum(1) / t, 0)


def _reference_divergence64(log_p: torch.Tensor, log_q: torch.Tensor) -> float:
    return (log_q.exp() * (log_q - log_p.exp())).sum().item()  # method.md's reference IR divergence


def test_every_fp32_island_of_the_training_loss_computes_in_fp32_under_bf16_autocast():
    # The network runs in bf16; NT-Xent and SIR/AIR take its bf16 embeddings and must compute in
    # fp32: each weighted part equals the float64 formula on the same embeddings to fp32 rounding
    # (similarities in bf16 would be off by ~1e-3).
    config = RunConfig(method=MethodConfig(ir=True))
    method, t = ACL(config), config.method.temperature
    model = robust_hub.create_backbone("robust_resnet_tiny").train()
    outputs = []
    model.register_forward_hook(lambda module, args, out: outputs.append(out.detach()))
    views = [torch.rand(8, 3, 16, 16) for _ in range(5)]
    with FastPath(bf16=True).autocast():
        terms = method.loss(model, (views[0], views[1]), (views[2], views[3]), epoch=0, original=views[4])
    clean, adversarial, z_o = outputs
    assert clean.dtype == adversarial.dtype == z_o.dtype == torch.bfloat16  # the network did run in bf16
    z_i, z_j = clean.chunk(2)
    a_i, a_j = adversarial.chunk(2)
    sir = _reference_divergence64(_log_p64(z_i, z_o, t), _log_p64(z_j, z_o, t))
    air = _reference_divergence64(_log_p64(a_i, z_o, t) + _log_p64(a_i, z_i, t),
                                  _log_p64(a_j, z_o, t) + _log_p64(a_j, z_j, t))
    expected = {"nat": _nt_xent64(z_i, z_j, t), "adv": _nt_xent64(a_i, a_j, t), "sir": 0.5 * sir, "air": 0.5 * air}
    for name, value in expected.items():
        assert terms.parts[name].dtype == torch.float32
        assert terms.parts[name].item() == pytest.approx(value, rel=2e-6, abs=1e-7), name


def test_the_attack_scores_its_bf16_embeddings_with_fp32_similarities(monkeypatch):
    # Under the fast path's autocast the attack's network runs in bf16; the NT-Xent it maximises
    # must still form its similarity logits in fp32, or the sign of the input gradient is bf16 noise.
    import torch.nn.functional as F

    logits_dtypes, real = [], F.cross_entropy

    def spy(logits, *args, **kwargs):
        logits_dtypes.append(logits.dtype)
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy)  # NT-Xent's last op: its input is the similarity logits
    embeddings = []
    model = robust_hub.create_backbone("robust_resnet_tiny").train()
    model.register_forward_hook(lambda module, args, out: embeddings.append(out.dtype))
    ACL(RunConfig(attack=AttackConfig(steps=2))).attack(model, torch.rand(8, 3, 16, 16), torch.rand(8, 3, 16, 16),
                                                        FastPath(bf16=True).autocast_factory())
    assert embeddings == [torch.bfloat16] * 2
    assert logits_dtypes == [torch.float32] * 2
