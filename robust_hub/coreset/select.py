"""Robustness-aware coreset selection (RCS, Xu et al. 2023): which training indices to train on next.

Everything here is a function of (model, data, config, epoch): the loop only asks for the indices.
Randomness (batch partition, augmentation, attack starts) is drawn under ``torch.random.fork_rng``
from seeds derived from (seed, epoch, batch), so a selection is deterministic, leaves the training
RNG streams untouched, and is the same whichever process computes which batch.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.func import functional_call, grad, vmap

from robust_hub.coreset.objective import rd_attack, representational_divergence
from robust_hub.data import SimCLRAugment
from robust_hub.training.distributed import local_only

MODES = ("none", "rcs", "random")
APPROXIMATIONS = ("last_layer", "full")
GAIN_VECTORS = ("row_mean", "full")
SELECTION_LOSSES = ("acl", "method")
_PARTITION_SALT, _BATCH_SALT, _VAL_SALT = 7_919, 104_729, 1_299_709


# ----------------------------------------------------------------------------- schedule and budget
def selection_due(coreset: Any, epoch: int) -> bool:
    """Algorithm 2: a new coreset at the end of warm-up, then every ``interval`` epochs."""
    return coreset.mode != "none" and epoch >= coreset.warmup_epochs and (epoch - coreset.warmup_epochs) % coreset.interval == 0


def coreset_active(coreset: Any, epoch: int) -> bool:
    """Whether ``epoch`` trains on a coreset (after the warm-up on the full set)."""
    return coreset.mode != "none" and epoch >= coreset.warmup_epochs


def budget_batches(num_images: int, fraction: float, batch_size: int) -> int:
    """floor(k |X| / batch) minibatches (at least one), as in Algorithm 1."""
    return max(1, math.floor(fraction * num_images / batch_size + 1e-9))


def partition(num_images: int, batch_size: int, seed: int, epoch: int) -> torch.Tensor:
    """The training set split into seeded minibatches B_m: an int64 [M, batch] tensor (remainder dropped)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * _PARTITION_SALT + 1)
    order = torch.randperm(num_images, generator=generator)
    m = num_images // batch_size
    return order[: m * batch_size].view(m, batch_size)


def candidate_batches(num_images: int, config: Any, epoch: int) -> torch.Tensor:
    """The minibatches a selection chooses from: the seeded partition, cut to ``train.max_steps_per_epoch``
    minibatches when that is set (a capped full epoch trains on no more), so a short run selects in short time."""
    batches = partition(num_images, config.train.batch_size, config.train.seed, epoch)
    cap = config.train.max_steps_per_epoch
    return batches[:cap] if cap else batches


def chunk_picks(num_batches: int, picks: int, chunk: int) -> list[tuple[int, int, int]]:
    """(start, end, picks) per chunk of minibatches; picks spread so that they sum to ``picks`` exactly."""
    if not chunk or chunk >= num_batches:
        return [(0, num_batches, picks)]
    bounds = list(range(0, num_batches, chunk)) + [num_batches]
    cumulative = [picks * b // num_batches for b in bounds]
    return [(bounds[i], bounds[i + 1], cumulative[i + 1] - cumulative[i]) for i in range(len(bounds) - 1)]


@dataclass
class Selection:
    """One selection: the coreset (positions in the training set) and what it cost."""

    epoch: int
    mode: str
    indices: torch.Tensor
    gains: list[float] = field(default_factory=list)  # of each picked batch, in pick order (rcs only)
    seconds: float = 0.0

    def record(self, labels: torch.Tensor | None = None, num_classes: int = 0) -> dict[str, Any]:
        """A JSON-able summary for the logs, the checkpoint and the model card."""
        entry: dict[str, Any] = {"epoch": self.epoch, "mode": self.mode, "size": int(self.indices.numel()),
                                 "seconds": round(self.seconds, 3), "gains": [float(g) for g in self.gains]}
        if labels is not None and num_classes:
            chosen = labels[self.indices.cpu()]
            entry["class_counts"] = torch.bincount(chosen[chosen >= 0], minlength=num_classes).tolist()
        return entry


# ----------------------------------------------------------------------------- the greedy search
def greedy_select(batch_grads: torch.Tensor, val_grad: Callable[[torch.Tensor], torch.Tensor], picks: int,
                  eta: float, compress: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> tuple[list[int], list[float]]:
    """Algorithm 1 on precomputed per-batch gradients ``batch_grads`` [M, D].

    ``val_grad(delta)`` is q_U at theta_0 + delta. Each round: gain_m = eta * q_U . q_m over the batches
    not yet taken, take the best (lowest index on ties), step delta <- delta - eta * q_best, recompute q_U.
    ``compress`` maps gradient vectors to what the gain compares (e.g. the reference's row means).
    """
    compress = compress or (lambda g: g)
    scores = compress(batch_grads).double()
    taken = torch.zeros(batch_grads.shape[0], dtype=torch.bool, device=batch_grads.device)
    delta = torch.zeros(batch_grads.shape[1], dtype=batch_grads.dtype, device=batch_grads.device)
    order, gains = [], []
    q_u = val_grad(delta)
    for round_ in range(picks):
        gain = eta * (scores @ compress(q_u).double())
        gain[taken] = -math.inf
        best = int(torch.argmax(gain))
        order.append(best)
        gains.append(float(gain[best]))
        taken[best] = True
        if round_ < picks - 1:  # the last pick needs no step
            delta = delta - eta * batch_grads[best]
            q_u = val_grad(delta)
    return order, gains


def row_mean_compressor(shapes: Sequence[torch.Size]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reference code's compression: each parameter's gradient matrix averaged over its rows."""
    sizes = [math.prod(s) for s in shapes]

    def compress(flat: torch.Tensor) -> torch.Tensor:
        parts = flat.split(sizes, dim=-1)
        means = [p.reshape(*p.shape[:-1], s[0], -1).mean(dim=-2) for p, s in zip(parts, shapes)]
        return torch.cat(means, dim=-1)

    return compress


# ----------------------------------------------------------------------------- the method adapter
def method_batch_loss(method: Any, model: Callable, views: tuple[torch.Tensor, torch.Tensor],
                      adversarial: tuple[torch.Tensor, torch.Tensor], original: torch.Tensor | None,
                      epoch: int) -> torch.Tensor:
    """The one place that speaks the methods' loss interface: the scalar total of a batch's ``LossTerms``
    (with IR, ``original`` carries the un-augmented images, or their features under the last-layer approximation)."""
    return method.loss(model, views, adversarial, epoch, original=original).total


def selection_method(method: Any, config: Any) -> Any:
    """The method whose loss gives q_m: plain ACL (w = 0, no IR), as the reference selects for every method,
    or with ``coreset.selection_loss: method`` the run's own (DynACL's w at the epoch, IR's terms)."""
    if config.coreset.selection_loss == "method" or getattr(method, "supervised", False):
        return method
    from robust_hub.training.methods import ACL

    plain = dataclasses.replace(config.method, name="acl", ir=False, strength=1.0, adv_weight=0.0)
    return ACL(dataclasses.replace(config, method=plain))


def method_attack(method: Any, model: nn.Module, views: tuple[torch.Tensor, torch.Tensor], original: torch.Tensor,
                  autocast: Callable[[], AbstractContextManager]) -> tuple[torch.Tensor, torch.Tensor]:
    """The one place that speaks the methods' attack interface."""
    return method.attack(model, views[0], views[1], autocast)


class _FeatureHead:
    """Looks like the backbone to a method's loss, but maps precomputed pooled features through the
    projection head with the given parameters (the last-layer approximation)."""

    def __init__(self, projector: nn.Module, params: dict[str, torch.Tensor]):
        self.projector, self.params = projector, params

    def __call__(self, features: torch.Tensor, route: str | None = None, project: bool = True) -> torch.Tensor:
        for module in self.projector.modules():
            if hasattr(module, "route"):
                module.route = route or "pgd"
        return functional_call(self.projector, self.params, (features,))


# ----------------------------------------------------------------------------- RCS
@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def head_linear_names(model: nn.Module) -> list[str]:
    """The projection head's linear-layer parameters, the last-layer approximation's theta."""
    return [f"projector.{prefix}.{name}" for prefix, module in model.projector.named_modules()
            if isinstance(module, nn.Linear) for name, _ in module.named_parameters(recurse=False)]


class _RCS:
    """One RCS selection for a pre-training method (ACL, DynACL, +IR) on a dual-BN backbone."""

    project = True  # RD compares projection-head embeddings

    def __init__(self, model: nn.Module, method: Any, config: Any, epoch: int, images: torch.Tensor,
                 val_images: torch.Tensor, autocast: Callable[[], AbstractContextManager] | None):
        self.model, self.method, self.config, self.epoch = model, method, config, epoch
        self.images, self.val_images = images, val_images
        self.autocast = autocast or nullcontext
        self.c, self.seed = config.coreset, config.train.seed
        self.device = next(model.parameters()).device
        self.augment = SimCLRAugment(method.strength(epoch), size=config.data.image_size)  # the epoch's own views
        self.loss_method = selection_method(method, config)
        if self.c.approximation == "last_layer":
            self.names = self.last_layer_names(model)
        else:
            self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.theta0 = {n: params[n].detach() for n in self.names}
        self.shapes = [self.theta0[n].shape for n in self.names]
        self.compress = row_mean_compressor(self.shapes) if self.c.gain_vector == "row_mean" else None

    @staticmethod
    def last_layer_names(model: nn.Module) -> list[str]:
        return head_linear_names(model)

    # -- gradients of the training batches ---------------------------------------------------
    def _attacked_batch(self, batch: torch.Tensor, m: int) -> tuple[tuple, tuple, torch.Tensor]:
        with _seeded(self.seed * 1_000_003 + self.epoch * _BATCH_SALT + m, self.device):
            with torch.no_grad():
                view_i, view_j, original = self.augment.views(self.images[batch.to(self.images.device)])
            adversarial = method_attack(self.method, self.model, (view_i, view_j), original, self.autocast)
        return (view_i, view_j), adversarial, original

    def batch_grads(self, batches: torch.Tensor, numbers: Sequence[int]) -> torch.Tensor:
        """q_m for each minibatch ``batches[k]`` (numbered ``numbers[k]`` for its seeds): [len, D]."""
        if not len(numbers):
            return torch.zeros(0, sum(math.prod(s) for s in self.shapes), device=self.device)
        if self.c.approximation == "last_layer":
            return self._head_batch_grads(batches, numbers)
        rows = []
        params = [dict(self.model.named_parameters())[n] for n in self.names]
        for batch, m in zip(batches, numbers):
            views, adversarial, original = self._attacked_batch(batch, m)
            with local_only(), torch.enable_grad():
                loss = method_batch_loss(self.loss_method, self.model, views, adversarial, original, self.epoch)
                rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        return torch.stack(rows)

    def _pooled(self, x: torch.Tensor, route: str) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x, route), pre_logits=True)

    def _head_batch_grads(self, batches: torch.Tensor, numbers: Sequence[int]) -> torch.Tensor:
        clean, adv, orig = [], [], []
        for batch, m in zip(batches, numbers):  # the attack is batched over the images of each minibatch
            views, adversarial, original = self._attacked_batch(batch, m)
            with torch.no_grad():
                clean.append(self._pooled(torch.cat(views), "normal"))
                adv.append(self._pooled(torch.cat(adversarial), "pgd"))
                orig.append(self._pooled(original, "normal"))
        projector = self.model.projector
        fixed = {f"projector.{n}": p.detach() for n, p in projector.named_parameters()}
        fixed.update({f"projector.{n}": b for n, b in projector.named_buffers()})
        epoch, method = self.epoch, self.loss_method

        def loss(theta: dict[str, torch.Tensor], z_clean: torch.Tensor, z_adv: torch.Tensor,
                 z_orig: torch.Tensor) -> torch.Tensor:
            params = {k[len("projector."):]: v for k, v in {**fixed, **theta}.items()}
            head = _FeatureHead(projector, params)
            return method_batch_loss(method, head, z_clean.chunk(2), z_adv.chunk(2), z_orig, epoch)

        with local_only():
            per_batch = vmap(grad(loss), in_dims=(None, 0, 0, 0), chunk_size=self.c.vmap_chunk or None)(
                self.theta0, torch.stack(clean), torch.stack(adv), torch.stack(orig))
        return torch.cat([per_batch[n].reshape(len(numbers), -1) for n in self.names], dim=1)

    # -- q_U: the gradient of RD on the validation set ------------------------------------------
    def val_grad(self, delta: torch.Tensor, round_: int) -> torch.Tensor:
        offsets = delta.split([math.prod(s) for s in self.shapes])
        theta = {n: (self.theta0[n] + d.view(self.theta0[n].shape)).requires_grad_(True)
                 for n, d in zip(self.names, offsets)}
        detached = {n: t.detach() for n, t in theta.items()}

        def embed(params: dict[str, torch.Tensor]) -> Callable[[torch.Tensor, str], torch.Tensor]:
            return lambda x, route: functional_call(self.model, params, (x,), {"route": route, "project": self.project})

        c, total = self.c, self.val_images.shape[0]
        step = c.val_alpha if c.val_alpha is not None else (10 / 255) / max(c.val_steps, 1)
        grads = [torch.zeros_like(t) for t in theta.values()]
        batch = self.config.train.batch_size
        for start in range(0, total, batch):
            x = self.val_images[start:start + batch].to(self.device).float().div(255)
            with _seeded(self.seed * 1_000_003 + self.epoch * _VAL_SALT + round_ * 65_537 + start, self.device):
                x_adv = rd_attack(embed(detached), x, self.config.attack.eps, step, c.val_steps, c.rd)
            with torch.enable_grad():
                rd = representational_divergence(embed(theta)(x_adv, "pgd"), embed(theta)(x, "normal"), c.rd)
                parts = torch.autograd.grad(rd * (x.shape[0] / total), list(theta.values()))
            grads = [g + p for g, p in zip(grads, parts)]
        return torch.cat([g.reshape(-1) for g in grads])

    def select(self, rank: int, world: int) -> tuple[torch.Tensor, list[float]]:
        batches = candidate_batches(self.images.shape[0], self.config, self.epoch)
        picks = budget_batches(batches.numel(), self.c.fraction, self.config.train.batch_size)
        chosen, gains = [], []
        for start, end, chunk_picks_ in chunk_picks(batches.shape[0], picks, self.c.chunk_batches):
            if not chunk_picks_:
                continue
            mine = list(range(start + rank, end, world))
            local = self.batch_grads(batches[mine], mine)
            q = _gather_rows(local, end - start, rank, world)
            rounds = itertools.count()  # numbers each q_U evaluation, for the seed of RD's attack
            order, chunk_gains = greedy_select(q, lambda d: self.val_grad(d, next(rounds)), chunk_picks_, self.c.eta,
                                               self.compress)
            chosen += [start + o for o in order]
            gains += chunk_gains
        order_t = _broadcast(torch.tensor(chosen, dtype=torch.int64, device=self.device), world)
        gains_t = _broadcast(torch.tensor(gains, dtype=torch.float64, device=self.device), world)
        return batches[order_t.cpu()].reshape(-1), gains_t.tolist()


class _SupervisedRCS(_RCS):
    """RCS for supervised adversarial training: classifier-layer gradients of CE on 1-step PGD examples,
    RD measured on the logits."""

    project = False

    def __init__(self, *args: Any, labels: torch.Tensor):
        super().__init__(*args)
        self.labels = labels

    @staticmethod
    def last_layer_names(model: nn.Module) -> list[str]:
        return [f"head.{name}" for name, _ in model.head.named_parameters()]

    def _one_step_pgd(self, batch: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        from robust_hub.evaluation.attacks import PGDConfig, pgd

        eps = self.config.attack.eps
        x = self.images[batch.to(self.images.device)].float().div(255)
        y = self.labels[batch.to(self.labels.device)]
        with _seeded(self.seed * 1_000_003 + self.epoch * _BATCH_SALT + m, self.device), torch.enable_grad():
            return pgd(self.model, x, y, PGDConfig(eps=eps, alpha=eps, steps=1, random_start=True)), y

    def batch_grads(self, batches: torch.Tensor, numbers: Sequence[int]) -> torch.Tensor:
        if not len(numbers):
            return torch.zeros(0, sum(math.prod(s) for s in self.shapes), device=self.device)
        examples = [self._one_step_pgd(batch, m) for batch, m in zip(batches, numbers)]
        if self.c.approximation == "last_layer":
            with torch.no_grad():
                features = torch.stack([self.model.forward_head(self.model.forward_features(x), pre_logits=True)
                                        for x, _ in examples])
            labels = torch.stack([y for _, y in examples])
            weight, bias = (self.theta0[n] for n in self.names)

            def loss(w: torch.Tensor, b: torch.Tensor, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return torch.nn.functional.cross_entropy(torch.nn.functional.linear(f, w, b), y)

            gw, gb = vmap(grad(loss, argnums=(0, 1)), in_dims=(None, None, 0, 0))(weight, bias, features, labels)
            return torch.cat([gw.reshape(len(numbers), -1), gb.reshape(len(numbers), -1)], dim=1)
        params = [dict(self.model.named_parameters())[n] for n in self.names]
        rows = []
        for x, y in examples:
            with torch.enable_grad():
                loss = torch.nn.functional.cross_entropy(self.model(x), y)
                rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        return torch.stack(rows)


def _gather_rows(local: torch.Tensor, total: int, rank: int, world: int) -> torch.Tensor:
    """Rows r, r + world, ... computed by process r, reassembled in order on every process."""
    if world == 1:
        return local
    per = -(-total // world)
    padded = torch.zeros(per, local.shape[1], dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded.contiguous())
    full = torch.empty(total, local.shape[1], dtype=local.dtype, device=local.device)
    for r, piece in enumerate(pieces):
        count = len(range(r, total, world))
        full[r::world] = piece[:count]
    return full


def _broadcast(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """Process 0's result on every process (batch-norm buffers may differ slightly between processes)."""
    if world > 1:
        dist.broadcast(tensor, src=0)
    return tensor


def select_coreset(model: nn.Module, method: Any, config: Any, epoch: int, images: torch.Tensor,
                   val_images: torch.Tensor | None = None, *, autocast: Callable[[], AbstractContextManager] | None = None,
                   labels: torch.Tensor | None = None, rank: int = 0, world: int = 1) -> Selection:
    """The coreset for ``epoch`` per ``config.coreset`` (``rcs`` or ``random``), the same on every process.

    ``images`` are the uint8 training images (on the model's device), ``val_images`` the uint8 held-out
    validation images RD is measured on. ``model`` is the bare backbone (not DDP-wrapped); it is not modified.
    A supervised method (``method.supervised``) selects with classifier-layer gradients and needs ``labels``.
    """
    c, batch = config.coreset, config.train.batch_size
    started = time.perf_counter()
    if c.mode == "random":
        batches = candidate_batches(images.shape[0], config, epoch)
        picks = budget_batches(batches.numel(), c.fraction, batch)
        generator = torch.Generator().manual_seed(config.train.seed * 1_000_003 + epoch * _PARTITION_SALT + 2)
        order = torch.randperm(batches.shape[0], generator=generator)[:picks]
        return Selection(epoch, "random", batches[order].reshape(-1), [], time.perf_counter() - started)
    if c.mode != "rcs":
        raise ValueError(f"coreset.mode {c.mode!r} selects nothing")
    if val_images is None or not len(val_images):
        raise ValueError("RCS needs a validation set (data.val_fraction > 0)")
    arguments = (model, method, config, epoch, images, val_images, autocast)
    with _eval_mode(model):
        if getattr(method, "supervised", False):
            if labels is None:
                raise ValueError("RCS for supervised training needs the training labels")
            search: _RCS = _SupervisedRCS(*arguments, labels=labels)
        else:
            search = _RCS(*arguments)
        indices, gains = search.select(rank, world)
    return Selection(epoch, "rcs", indices, gains, time.perf_counter() - started)
