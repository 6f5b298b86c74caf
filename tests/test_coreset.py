"""RCS: the RD objective, the greedy search, the last-layer approximation, budgets, seeds, several processes."""

import dataclasses
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from robust_hub.config import load_config
from robust_hub.coreset import (
    budget_batches,
    chunk_picks,
    coreset_active,
    greedy_select,
    minmax_rows,
    partition,
    representational_divergence,
    row_mean_compressor,
    select_coreset,
    selection_due,
)
from robust_hub.coreset.select import _RCS
from robust_hub.errors import RobustHubError
from robust_hub.losses import air_loss, nt_xent, sir_loss
from robust_hub.models import create_backbone
from robust_hub.training.methods import METHODS

HEAD_LINEAR = ["projector.fc1.weight", "projector.fc1.bias", "projector.fc2.weight", "projector.fc3.weight"]


def tiny_config(*overrides):
    return load_config(None, ["model.arch=robust_resnet_tiny", "data.image_size=16", "train.batch_size=8",
                              "attack.steps=1", "train.epochs=10", "train.warmup_epochs=1", "coreset.mode=rcs",
                              "coreset.warmup_epochs=0", "coreset.fraction=0.25", *overrides])


def tiny_problem(seed=0, n=64, n_val=12):
    generator = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 3, 16, 16, generator=generator) * 255).to(torch.uint8)
    val = (torch.rand(n_val, 3, 16, 16, generator=generator) * 255).to(torch.uint8)
    torch.manual_seed(seed)
    model = create_backbone("robust_resnet_tiny", dual_bn=True, proj_layers=3)
    return model, images, val


# ----------------------------------------------------------------------------- objective
def test_minmax_kl_matches_the_formula():
    z_adv, z_nat = torch.randn(5, 7), torch.randn(5, 7)
    expected = 0.0
    for a_row, b_row in zip(z_adv.tolist(), z_nat.tolist()):
        a = [(v - min(a_row)) / (max(a_row) - min(a_row)) + 1e-8 for v in a_row]
        b = [(v - min(b_row)) / (max(b_row) - min(b_row)) + 1e-8 for v in b_row]
        expected += sum(x * (math.log(x) - math.log(y)) for x, y in zip(a, b))
    expected /= 35
    assert representational_divergence(z_adv, z_nat, "minmax_kl").item() == pytest.approx(expected, rel=1e-5)
    rows = minmax_rows(z_adv)
    assert torch.allclose(rows.min(1).values, torch.zeros(5)) and torch.allclose(rows.max(1).values, torch.ones(5))


def test_softmax_kl_matches_torch_kl_div_and_vanishes_on_equal_inputs():
    z_adv, z_nat = torch.randn(6, 4), torch.randn(6, 4)
    expected = F.kl_div(F.log_softmax(z_nat, 1), F.log_softmax(z_adv, 1), log_target=True, reduction="batchmean")
    assert representational_divergence(z_adv, z_nat, "softmax_kl").item() == pytest.approx(expected.item(), rel=1e-5)
    assert representational_divergence(z_adv, z_adv, "softmax_kl").abs().item() < 1e-6
    assert representational_divergence(z_adv, z_adv, "minmax_kl").abs().item() < 1e-6


# ----------------------------------------------------------------------------- greedy search
def test_greedy_follows_the_moving_validation_gradient():
    # RD(theta) = 0.5 |theta - t|^2, so q_U(delta) = delta - t. Worked by hand with eta = 1:
    # gains at 0: a 0.9, b 1.0, c 0.95, d 0.855 -> b; then q_U = (0, -0.9): a 0.9, c 0, d 0.855 -> a;
    # then q_U = (0, 0.1): c 0, d -0.095 -> c. A ranking by the first gains alone would give b, c, a.
    t = torch.tensor([1.0, 0.9])
    q = torch.tensor([[0.0, -1.0], [-1.0, 0.0], [-0.95, 0.0], [0.0, -0.95]])
    order, gains = greedy_select(q, lambda delta: delta - t, picks=3, eta=1.0)
    assert order == [1, 0, 2]
    assert gains == pytest.approx([1.0, 0.9, 0.0], abs=1e-6)


def test_greedy_with_a_fixed_validation_gradient_takes_the_top_dot_products():
    torch.manual_seed(3)
    q, q_u = torch.randn(20, 6), torch.randn(6)
    order, gains = greedy_select(q, lambda delta: q_u, picks=5, eta=0.5)
    expected = sorted(range(20), key=lambda m: -float(q[m] @ q_u))[:5]
    assert order == expected
    assert gains == pytest.approx([0.5 * float(q[m] @ q_u) for m in expected], rel=1e-5)


def test_row_mean_compression_is_the_mean_over_rows_of_each_matrix():
    shapes = [torch.Size([3, 4]), torch.Size([3]), torch.Size([2, 3])]
    w1, b1, w2 = torch.randn(3, 4), torch.randn(3), torch.randn(2, 3)
    flat = torch.cat([w1.reshape(-1), b1, w2.reshape(-1)])
    compressed = row_mean_compressor(shapes)(torch.stack([flat, 2 * flat]))
    expected = torch.cat([w1.mean(0), b1.mean().view(1), w2.mean(0)])
    assert compressed.shape == (2, 4 + 1 + 3)
    assert torch.allclose(compressed[0], expected) and torch.allclose(compressed[1], 2 * expected)


# ----------------------------------------------------------------------------- budgets and schedule
@pytest.mark.parametrize("n,k,b", [(50_000, 0.2, 512), (1000, 0.05, 32), (64, 0.25, 8), (100, 0.01, 64)])
def test_budget_is_floor_of_k_n_over_batch(n, k, b):
    assert budget_batches(n, k, b) == max(1, math.floor(k * n / b))


@pytest.mark.parametrize("m,picks,chunk", [(97, 19, 0), (97, 19, 10), (1000, 50, 100), (10, 3, 4), (7, 7, 2)])
def test_chunked_picks_sum_to_the_budget_and_fit_each_chunk(m, picks, chunk):
    chunks = chunk_picks(m, picks, chunk)
    assert sum(p for _, _, p in chunks) == picks
    assert chunks[0][0] == 0 and chunks[-1][1] == m
    assert all(0 <= p <= end - start for start, end, p in chunks)
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))


def test_schedule_warmup_then_every_interval():
    c = tiny_config("coreset.warmup_epochs=3", "coreset.interval=2").coreset
    assert [e for e in range(10) if selection_due(c, e)] == [3, 5, 7, 9]
    assert [e for e in range(10) if coreset_active(c, e)] == list(range(3, 10))
    none = tiny_config("coreset.mode=none").coreset
    assert not any(selection_due(none, e) or coreset_active(none, e) for e in range(10))


def test_partition_is_a_seeded_permutation():
    batches = partition(70, 8, seed=1, epoch=2)
    assert batches.shape == (8, 8) and batches.unique().numel() == 64 and int(batches.max()) < 70
    assert torch.equal(batches, partition(70, 8, seed=1, epoch=2))
    assert not torch.equal(batches, partition(70, 8, seed=1, epoch=3))


@pytest.mark.parametrize("mode", ["rcs", "random"])
def test_selection_budget_is_exact_and_deterministic_under_a_seed(mode):
    config = tiny_config(f"coreset.mode={mode}")
    model, images, val = tiny_problem()
    method = METHODS["acl"](config)
    first = select_coreset(model, method, config, 0, images, val)
    assert first.indices.numel() == budget_batches(64, 0.25, 8) * 8 == 16
    assert first.indices.unique().numel() == 16 and int(first.indices.max()) < 64
    again = select_coreset(model, method, config, 0, images, val)
    assert torch.equal(first.indices, again.indices) and first.gains == again.gains
    other_seed = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=2))
    assert not torch.equal(first.indices, select_coreset(model, method, other_seed, 0, images, val).indices)
    if mode == "rcs":
        assert len(first.gains) == 2 and first.gains[0] != first.gains[1]


def test_selection_does_not_touch_the_model_or_the_training_rng():
    config = tiny_config()
    model, images, val = tiny_problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    torch.manual_seed(11)
    select_coreset(model, METHODS["acl"](config), config, 0, images, val)
    after_selection = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(after_selection, torch.rand(3))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_last_layer_and_exact_agree_when_only_the_head_is_trainable():
    """With the backbone frozen, the full-gradient search runs over the head's linear layers only: the
    same parameters the approximation uses, with gradients taken through the whole model by plain autograd
    instead of vmap over precomputed features. The two must pick the same batches with the same gains."""
    config = tiny_config("coreset.fraction=0.4")
    model, images, val = tiny_problem(seed=4)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in HEAD_LINEAR)
    method = METHODS["acl"](config)
    approx = select_coreset(model, method, config, 0, images, val)
    exact_config = dataclasses.replace(config, coreset=dataclasses.replace(config.coreset, approximation="full"))
    exact = select_coreset(model, method, exact_config, 0, images, val)
    assert torch.equal(approx.indices, exact.indices)
    assert exact.gains == pytest.approx(approx.gains, rel=1e-4)
    # With every parameter trainable, the exact search sees more of the model and its gains differ.
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    assert select_coreset(model, method, exact_config, 0, images, val).gains != pytest.approx(approx.gains, rel=1e-4)


# ----------------------------------------------------------------------------- every method
# Epoch 6 of 10 with a DynACL period of 3: s = 1 - floor(6/3) * 3/10 = 0.4, w = (2/3)(1 - s) = 0.4.
METHOD_CASES = {
    "acl": ([], 1.0, 0.0, False),
    "acl+ir": (["method.ir=true"], 1.0, 0.0, True),
    "dynacl": (["method.name=dynacl", "method.schedule_period=3"], 0.4, 0.4, False),
    "dynacl+ir": (["method.name=dynacl", "method.schedule_period=3", "method.ir=true"], 0.4, 0.4, True),
}


@pytest.mark.parametrize("selection_loss", ["acl", "method"])
@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_batch_gradient_is_the_selection_loss(case, selection_loss):
    """q_m (last-layer approximation) is the head gradient of, written out here from method.md:
    by default (``acl``, as the reference selects for every method) the plain ACL loss (L_nat + L_adv) / 2;
    with ``coreset.selection_loss=method`` the method's own loss ((1-w) L_nat + (1+w) L_adv) / 2, or with IR
    (1-w) L_nat + (1+w) L_adv + 0.5 SIR + 0.5 AIR, with DynACL's s and w at the selection's epoch.
    Either way the views are the epoch's own (DynACL's strength s)."""
    overrides, strength, w, ir = METHOD_CASES[case]
    config = tiny_config(*overrides, f"coreset.selection_loss={selection_loss}")
    if selection_loss == "acl":
        w, ir = 0.0, False
    model, images, val = tiny_problem(seed=5)
    model.eval()  # as during a selection: batch norms on their running statistics
    epoch, m = 6, 3
    search = _RCS(model, METHODS[config.method.name](config), config, epoch, images, val, None)
    assert search.augment.strength == pytest.approx(strength)
    batch = partition(64, 8, config.train.seed, epoch)[m]
    q_m = search.batch_grads(batch.view(1, -1), [m])[0]

    (view_i, view_j), (adv_i, adv_j), original = search._attacked_batch(batch, m)
    head = [dict(model.named_parameters())[n] for n in HEAD_LINEAR]
    with torch.enable_grad():
        z_i, z_j = model(torch.cat([view_i, view_j]), route="normal", project=True).chunk(2)
        a_i, a_j = model(torch.cat([adv_i, adv_j]), route="pgd", project=True).chunk(2)
        nat, adv = nt_xent(z_i, z_j, 0.5), nt_xent(a_i, a_j, 0.5)
        if ir:
            z_o = model(original, route="normal", project=True)
            loss = (1 - w) * nat + (1 + w) * adv + 0.5 * sir_loss(z_i, z_j, z_o) + 0.5 * air_loss(a_i, a_j, z_i, z_j, z_o)
        else:
            loss = ((1 - w) * nat + (1 + w) * adv) / 2
        expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, head)])
    assert torch.allclose(q_m, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", ["dynacl", "dynacl+ir"])
def test_dynacl_and_ir_select_with_their_own_loss_and_keep_the_budget(case):
    config = tiny_config(*METHOD_CASES[case][0], "coreset.selection_loss=method")
    model, images, val = tiny_problem(seed=6)
    selection = select_coreset(model, METHODS[config.method.name](config), config, 6, images, val)
    assert selection.indices.numel() == 16 and selection.indices.unique().numel() == 16
    acl_config = tiny_config()
    acl = select_coreset(model, METHODS["acl"](acl_config), acl_config, 6, images, val)
    assert selection.gains != pytest.approx(acl.gains, rel=1e-4)  # the method's loss is what is scored


@pytest.mark.slow
def test_last_layer_and_exact_agree_for_dynacl_with_ir():
    """As for ACL, but through DynACL's schedule and IR's extra forward pass of the un-augmented images."""
    config = tiny_config("coreset.fraction=0.4", *METHOD_CASES["dynacl+ir"][0])
    model, images, val = tiny_problem(seed=4)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in HEAD_LINEAR)
    method = METHODS["dynacl"](config)
    approx = select_coreset(model, method, config, 6, images, val)
    exact_config = dataclasses.replace(config, coreset=dataclasses.replace(config.coreset, approximation="full"))
    exact = select_coreset(model, method, exact_config, 6, images, val)
    assert torch.equal(approx.indices, exact.indices)
    assert exact.gains == pytest.approx(approx.gains, rel=1e-4)


def test_chunked_selection_keeps_the_budget_and_resets_per_chunk():
    config = tiny_config("coreset.fraction=0.5", "coreset.chunk_batches=3")
    model, images, val = tiny_problem()
    selection = select_coreset(model, METHODS["acl"](config), config, 0, images, val)
    assert selection.indices.numel() == 32 and selection.indices.unique().numel() == 32
    batches = partition(64, 8, 1, 0)
    picked = [next(m for m in range(8) if torch.equal(batches[m], chunk)) for chunk in selection.indices.view(-1, 8)]
    # 8 minibatches in chunks [0,3) [3,6) [6,8) with 4 picks spread as 1, 2, 1
    assert sorted(m // 3 for m in picked) == [0, 1, 1, 2]


def test_class_balance_in_the_selection_record():
    config = tiny_config("coreset.mode=random")
    model, images, val = tiny_problem()
    labels = torch.arange(64) % 4
    record = select_coreset(model, METHODS["acl"](config), config, 0, images, val).record(labels, 4)
    assert sum(record["class_counts"]) == record["size"] == 16 and len(record["class_counts"]) == 4


@pytest.mark.parametrize("override,message", [
    ("coreset.mode=fancy", "coreset.mode"), ("coreset.fraction=0", "coreset.fraction"),
    ("coreset.rd=l2", "coreset.rd"), ("coreset.approximation=half", "coreset.approximation"),
    ("coreset.interval=0", "coreset.interval"), ("coreset.warmup_epochs=10", "ever used"),
    ("coreset.eta=-1", "coreset.eta"), ("coreset.val_steps=-1", "coreset.val_steps"),
    ("coreset.chunk_batches=-2", "coreset.chunk_batches"),
])
def test_bad_coreset_config_is_refused(override, message):
    with pytest.raises(RobustHubError, match=message):
        tiny_config(override)


# ----------------------------------------------------------------------------- several processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _select_worker(rank, world, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        config = tiny_config()
        model, images, val = tiny_problem()
        selection = select_coreset(model, METHODS["acl"](config), config, 0, images, val, rank=rank, world=world)
        results[rank] = (selection.indices.tolist(), selection.gains)
    finally:
        dist.destroy_process_group()


def test_two_process_selection_equals_single_process():
    config = tiny_config()
    model, images, val = tiny_problem()
    single = select_coreset(model, METHODS["acl"](config), config, 0, images, val)
    results = mp.Manager().dict()
    mp.spawn(_select_worker, args=(2, _free_port(), results), nprocs=2, join=True)
    for rank in range(2):
        indices, gains = results[rank]
        assert indices == single.indices.tolist()
        assert gains == pytest.approx(single.gains, rel=1e-5)


def test_a_compiled_model_selects_the_same_coreset():
    """The fast path compiles the backbone in place (speed.compile); the selection calls it through
    dynamo (attacks, functional_call with moved head parameters) and must pick what the plain model picks."""
    from torch._dynamo.utils import counters

    from robust_hub.training.fast import FastPath

    config = tiny_config()
    model, images, val = tiny_problem()
    plain = select_coreset(model, METHODS["acl"](config), config, 0, images, val)
    torch._dynamo.reset()
    counters.clear()
    compiled, _, _ = tiny_problem()
    FastPath(compile=True, compile_backend="eager").prepare_model(compiled)
    try:
        fast = select_coreset(compiled, METHODS["acl"](config), config, 0, images, val)
        assert counters["frames"]["total"] > 0  # dynamo did run the selection's forward passes
    finally:
        torch._dynamo.reset()
    assert torch.equal(fast.indices, plain.indices)
    assert fast.gains == pytest.approx(plain.gains, rel=1e-5)


def test_greedy_breaks_ties_towards_the_lowest_batch_index():
    from robust_hub.coreset.select import greedy_select

    batch_grads = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    order, gains = greedy_select(batch_grads, lambda delta: torch.tensor([1.0, 0.0]), picks=3, eta=0.02)
    assert order == [1, 2, 3] and gains == pytest.approx([0.02] * 3)


def test_every_point_the_rd_attack_takes_a_gradient_at_is_an_image_in_the_ball():
    from robust_hub.coreset.objective import rd_attack

    x, eps, seen = torch.rand(4, 3, 8, 8), 8 / 255, []
    x[:2] = 0.0
    x[2:] = 1.0
    weight = torch.randn(3 * 8 * 8, 5)

    def embed(images, route):
        if route == "pgd":
            seen.append(images.detach().clone())
        return images.flatten(1) @ weight

    torch.manual_seed(4)
    rd_attack(embed, x, eps, 2 / 255, 3, "minmax_kl")
    torch.manual_seed(4)
    start = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    assert len(seen) == 3 and torch.equal(seen[0], start)
    for point in seen:
        assert point.min() >= 0 and point.max() <= 1 and (point - x).abs().max() <= eps + 1e-6
