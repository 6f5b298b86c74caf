"""The generic pre-training loop: Accelerate for devices, DDP, mixed precision and checkpoints."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from safetensors import SafetensorError
from tqdm.auto import tqdm

from robust_hub.config import RunConfig
from robust_hub.coreset import coreset_active, select_coreset, selection_due
from robust_hub.coreset.state import CoresetState, selections_png
from robust_hub.data import ImageDataset, SimCLRAugment, load_image_dataset
from robust_hub.errors import RobustHubError
from robust_hub.io import write_bytes_atomic, write_json_atomic, write_marker, write_text_atomic
from robust_hub.models import RobustBackbone, create_backbone, list_backbones
from robust_hub.provenance import environment
from robust_hub.training.batches import epoch_batches
from robust_hub import model_card
from robust_hub.model_card import public_name
from robust_hub.models.hub import build_config
from robust_hub.training.card import loss_curve_png
from robust_hub.training.fast import DeviceLosses, FastPath
from robust_hub.training.methods import METHODS, LossTerms
from robust_hub.training.optim import build_optimizer, build_scheduler
from robust_hub.training.run_dir import (CHECKPOINTS, CONFIG_FILE, PROGRESS_FILE, clean_stale_checkpoints,
                                         prepare_output_dir, prune_checkpoints, set_aside_earlier_checkpoints)

log = logging.getLogger("robust_hub.pretrain")


@dataclass
class Progress:
    """Where the run stands; checkpointed with the model so a resume continues mid-epoch."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    losses: list[float] = field(default_factory=list)  # one mean per finished epoch
    epoch_loss_sum: float = 0.0  # of the current epoch, so a mid-epoch resume reports the whole epoch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "losses": list(self.losses), "epoch_loss_sum": self.epoch_loss_sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step, self.losses = int(state["global_step"]), list(state["losses"])
        self.epoch_loss_sum = float(state["epoch_loss_sum"])

    def finish_epoch(self) -> float:
        mean = self.epoch_loss_sum / max(self.step_in_epoch, 1)
        self.losses.append(mean)
        self.epoch, self.step_in_epoch, self.epoch_loss_sum = self.epoch + 1, 0, 0.0
        return mean


class StopRequest:
    """Turns SIGTERM/SIGINT into a checkpoint at the end of the current step."""

    def __init__(self) -> None:
        self.signum = 0
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def agreed(self, accelerator: Accelerator) -> int:
        """The signal any process received (all processes must checkpoint together)."""
        flag = torch.tensor([self.signum], device=accelerator.device)
        return int(accelerator.reduce(flag, reduction="sum").item()) if accelerator.num_processes > 1 else self.signum


@dataclass
class PretrainResult:
    model_dir: Path | None  # None when the run stopped early on a signal
    checkpoint: Path | None
    stopped_by_signal: int = 0


def pretrain(config: RunConfig, resume: str | bool | None = None, overwrite: bool = False) -> PretrainResult:
    """Pre-train per ``config``; ``resume`` is a checkpoint dir, or True for the latest one.

    ``overwrite`` lets a fresh run start in a directory holding another run (or other files).
    """
    return run_training(config, resume, _Trainer, overwrite)


def run_training(config: RunConfig, resume: str | bool | None, trainer_class: type["_Trainer"],
                 overwrite: bool = False) -> PretrainResult:
    """The shared driver: data, model, optimiser, Accelerate, resume; ``trainer_class`` owns the steps."""
    if config.method.name not in trainer_class.METHODS:
        raise RobustHubError(f"method.name={config.method.name!r} is not a {trainer_class.task} method; "
                             f"choose one of {sorted(trainer_class.METHODS)}")
    out = Path(config.train.output_dir)
    checkpoint_to_load = prepare_output_dir(out, config, resume, overwrite)  # before anything is created
    accelerator = Accelerator(
        # Without this, processes started by torchrun on a machine with no accelerator would
        # each train alone instead of forming a gloo (MULTI_CPU) group.
        cpu=not torch.accelerator.is_available(),
        mixed_precision=config.train.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    set_seed(config.train.seed, device_specific=True)
    train_set, val_set = _load_data(config)  # before anything is written: bad input fails clean
    model = trainer_class.build_model(config, train_set)
    fast = FastPath.resolve(config.speed, accelerator.device, accelerator.mixed_precision)
    log.info("fast path: %s", fast.describe())
    fast.prepare_model(model)
    optimizer = fast.prepare_optimizer(trainer_class.build_optimizer(model, config.train))
    scheduler = build_scheduler(optimizer, config.train)
    model, optimizer = accelerator.prepare(model, optimizer)
    progress, coreset = Progress(), CoresetState()
    if checkpoint_to_load:
        # The scheduler is stepped with absolute epoch progress and needs no state; the progress
        # is JSON, so nothing registered with Accelerate is unpickled without weights_only.
        try:
            accelerator.load_state(str(checkpoint_to_load))
        except (RuntimeError, ValueError, KeyError, OSError, EOFError, SafetensorError) as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise RobustHubError(f"--resume: cannot load {checkpoint_to_load}: {first_line}") from None
        fast.prepare_optimizer(optimizer)  # the loaded param groups carry the saving run's speed.foreach
        progress.load_state_dict(_read_progress(checkpoint_to_load))
        coreset = CoresetState.load(checkpoint_to_load)
        log.info("resumed from %s at epoch %d step %d", checkpoint_to_load, progress.epoch, progress.step_in_epoch)
    accelerator.wait_for_everyone()  # every process has checked the output directory before it changes
    if accelerator.is_main_process:
        clean_stale_checkpoints(out)
        if overwrite and not checkpoint_to_load:
            set_aside_earlier_checkpoints(out)
    _write_run_files(accelerator, config, out, train_set, val_set)
    accelerator.init_trackers(trainer_class.task, config=_flat(config.to_dict()))
    trainer = trainer_class(config, accelerator, model, optimizer, scheduler, progress, train_set, val_set, fast)
    trainer.coreset = coreset
    try:
        return trainer.run()
    finally:
        trainer.stop.restore()
        accelerator.end_training()


def _load_data(config: RunConfig) -> tuple[ImageDataset, ImageDataset]:
    d = config.data
    dataset = load_image_dataset(d.source, d.split, image_size=d.image_size, cache_dir=d.cache_dir)
    if d.subset is not None:  # before the validation split, so training, RCS and its validation all see only these
        if d.subset > len(dataset):
            raise RobustHubError(f"data.subset={d.subset} is more than the {len(dataset)} images of {d.source} ({d.split})")
        dataset = dataset.subset(range(d.subset))
    train_set, val_set = dataset.split_validation(d.val_fraction, seed=config.train.seed)
    if len(train_set) < config.train.batch_size:
        raise RobustHubError(
            f"{d.source} has {len(train_set)} training images, fewer than train.batch_size={config.train.batch_size}"
        )
    return train_set, val_set


def _build_model(config: RunConfig) -> RobustBackbone:
    m = config.model
    options = {**m.options, "proj_layers": m.proj_layers}
    if m.arch in list_backbones():
        return create_backbone(m.arch, dual_bn=m.dual_bn, **options)
    model = create_backbone(m.arch, **options)  # a timm model, or an error naming the choices
    if m.dual_bn:
        raise RobustHubError(f"model.dual_bn=true needs a robust-hub architecture; {m.arch!r} has a single batch "
                             "norm (set model.dual_bn=false)")
    return model


def _read_progress(checkpoint: Path) -> dict[str, Any]:
    try:
        state = json.loads((checkpoint / PROGRESS_FILE).read_text(encoding="utf-8"))
        Progress().load_state_dict(state)  # validates the fields
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RobustHubError(f"--resume: {checkpoint / PROGRESS_FILE} is missing or corrupt ({error})") from None
    return state


def _write_run_files(accelerator: Accelerator, config: RunConfig, out: Path,
                     train_set: ImageDataset, val_set: ImageDataset) -> None:
    if not accelerator.is_main_process:
        return
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "run_config.yaml", config.to_yaml())
    write_marker(out, "run", files=["run_config.yaml", "environment.json", "logs", CHECKPOINTS, "model",
                                   "coreset_selections.png"])
    write_json_atomic(out / "environment.json", environment(
        seeds={"seed": config.train.seed, "per_process": "seed + process_index"},
        extra={"num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
               "data": {"source": config.data.source, "subset": config.data.subset,
                        "fingerprint": getattr(train_set, "fingerprint", None),
                        "train_images": len(train_set), "val_images": len(val_set)}},
    ))


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


class _Trainer:
    task = "pretrain"
    METHODS: dict[str, Any] = METHODS
    build_optimizer = staticmethod(build_optimizer)

    @staticmethod
    def build_model(config: RunConfig, train_set: ImageDataset) -> torch.nn.Module:
        return _build_model(config)

    def __init__(self, config: RunConfig, accelerator: Accelerator, model: torch.nn.Module, optimizer: Any,
                 scheduler: Any, progress: Progress, train_set: ImageDataset, val_set: ImageDataset,
                 fast: FastPath | None = None):
        self.config, self.accelerator, self.model = config, accelerator, model
        self.optimizer, self.scheduler, self.progress = optimizer, scheduler, progress
        self.train_set, self.val_set, self.num_val_images = train_set, val_set, len(val_set)
        self.coreset = CoresetState()
        self.method = self.METHODS[config.method.name](config)
        self.raw_model: RobustBackbone = accelerator.unwrap_model(model)
        # The whole (uint8) training set lives on the device: no loader workers to starve a GPU.
        self.images = train_set.images.to(accelerator.device)
        self.out = Path(config.train.output_dir)
        self.stop = StopRequest()
        self.started = time.time()
        self.fast = fast or FastPath()
        self.losses = DeviceLosses()

    def epoch_indices(self) -> torch.Tensor:
        """What this epoch trains on: the whole training set, or the current coreset after the warm-up."""
        if coreset_active(self.config.coreset, self.progress.epoch) and self.coreset.indices is not None:
            return self.coreset.indices
        return torch.arange(len(self.train_set))

    def steps_per_epoch(self) -> int:
        steps = len(self.epoch_indices()) // self.config.train.batch_size
        cap = self.config.train.max_steps_per_epoch
        return min(steps, cap) if cap else steps

    def run(self) -> PretrainResult:
        t, acc, p = self.config.train, self.accelerator, self.progress
        log.info("%s %s with %s on %d images: %d epochs x %d steps, %d process(es)",
                 "pre-training" if self.task == "pretrain" else "adversarially training", self.config.model.arch, self.method.name, len(self.train_set), t.epochs,
                 self.steps_per_epoch(), acc.num_processes)
        while p.epoch < t.epochs:
            signum = self._run_epoch()
            if signum:
                checkpoint = self.save_checkpoint()
                log.warning("stopped by signal %d; checkpoint %s; continue with --resume", signum, checkpoint)
                return PretrainResult(None, checkpoint, signum)
            if t.checkpoint_every and p.epoch % t.checkpoint_every == 0 and p.epoch < t.epochs:
                self.save_checkpoint()
        checkpoint = self.save_checkpoint()
        model_dir = self.save_model()
        if self.config.train.push_to_hub and self.accelerator.is_main_process:
            from robust_hub.hub_push import push_to_hub

            log.info("pushed to %s: commit %s", self.config.train.push_to_hub,
                     push_to_hub(model_dir, self.config.train.push_to_hub))
        return PretrainResult(model_dir, checkpoint)

    def _run_epoch(self) -> int:
        p, acc, t = self.progress, self.accelerator, self.config.train
        if p.step_in_epoch == 0 and selection_due(self.config.coreset, p.epoch) and self.coreset.selected_epoch != p.epoch:
            self.select_coreset()
            signum = self.stop.agreed(acc)
            if signum:
                return signum
        steps = self.steps_per_epoch()
        batches = epoch_batches(self.epoch_indices(), t.batch_size, t.seed, p.epoch,
                                acc.process_index, acc.num_processes)[p.step_in_epoch:steps]
        augment = SimCLRAugment(self.method.strength(p.epoch), size=self.config.data.image_size)
        bar = tqdm(batches, desc=f"epoch {p.epoch + 1}/{t.epochs}", disable=not acc.is_local_main_process,
                   initial=p.step_in_epoch, total=steps, dynamic_ncols=True)
        for indices in bar:
            loss = self.train_step(augment, indices.to(acc.device), steps)
            if loss is not None:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.3g}")
            # Agreeing on a signal is a collective with a host read; several processes do it when
            # the losses are read anyway, so the step itself never waits for the host.
            signum = self.stop.agreed(acc) if loss is not None or acc.num_processes == 1 else 0
            if signum:
                self.read_losses()
                return signum
        self.read_losses()
        mean = p.finish_epoch()
        acc.log({"train/epoch_loss": mean, **self.schedule_scalars(p.epoch - 1)}, step=p.global_step)
        log.info("epoch %d/%d: mean loss %.4f", p.epoch, t.epochs, mean)
        return 0

    def select_coreset(self) -> None:
        """A new coreset for this epoch (the same on every process), logged, plotted and checkpointed at once."""
        acc, epoch = self.accelerator, self.progress.epoch
        selection = select_coreset(self.raw_model, self.method, self.config, epoch, self.images,
                                   self.val_set.images.to(acc.device), autocast=acc.autocast,
                                   labels=self.train_set.labels.to(acc.device),
                                   rank=acc.process_index, world=acc.num_processes)
        record = selection.record(self.train_set.labels, self.train_set.num_classes)
        self.coreset = CoresetState(selection.indices.cpu(), epoch, [*self.coreset.history, record])
        acc.log({"coreset/seconds": record["seconds"], "coreset/size": record["size"],
                 **({"coreset/first_gain": record["gains"][0]} if record["gains"] else {})}, step=self.progress.global_step)
        log.info("coreset (%s) for epoch %d: %d images in %.1f s%s", selection.mode, epoch + 1, record["size"],
                 record["seconds"], f", gains {record['gains'][0]:.3g} .. {record['gains'][-1]:.3g}" if record["gains"] else "")
        if acc.is_main_process:
            write_bytes_atomic(self.out / "coreset_selections.png", self._selections_plot())
        # A selection is expensive: keep it (and the run's position) in a checkpoint straight away.
        log.info("checkpoint after the coreset selection: %s", self.save_checkpoint())

    def _selections_plot(self) -> bytes:
        return selections_png(self.coreset.history, f"{self.config.coreset.mode.upper()} coreset, k={self.config.coreset.fraction}")

    def train_step(self, augment: SimCLRAugment, indices: torch.Tensor, steps: int) -> float | None:
        """One step; returns the loss when it was read back this step (every step unless sync_free)."""
        p, acc, fast = self.progress, self.accelerator, self.fast
        self.scheduler.step(p.epoch + p.step_in_epoch / steps)
        terms = self.batch_loss(augment, indices)
        loss = terms.total
        self.optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        self.optimizer.step()
        p.step_in_epoch += 1
        p.global_step += 1
        self.losses.add(terms.total, terms.parts)
        if fast.sync_free and p.global_step % self.config.train.log_every:
            return None
        return self.read_losses()

    def read_losses(self) -> float | None:
        """Reads the pending losses and their parts back (one collective, one transfer), checks them,
        adds them to the epoch and logs the last step's; returns its loss, or None if none was pending."""
        p, acc = self.progress, self.accelerator
        first_step = p.step_in_epoch - len(self.losses) + 1
        rows = self.losses.read(lambda t: acc.reduce(t, reduction="mean"))
        for offset, (value, _) in enumerate(rows):
            if not math.isfinite(value):
                raise RobustHubError(f"training loss became {value} at epoch {p.epoch + 1} step {first_step + offset}; "
                                     "lower train.lr or check the data")
            p.epoch_loss_sum += value
        if not rows:
            return None
        value, parts = rows[-1]
        if p.global_step % self.config.train.log_every == 0:
            lr = self.optimizer.param_groups[0]["lr"]
            acc.log({"train/loss": value, "train/lr": lr, **{f"train/loss_{k}": v for k, v in parts.items()}},
                    step=p.global_step)
            log.info("step %d (epoch %d): loss %.4f (%s), lr %.4g", p.global_step, p.epoch + 1, value,
                     ", ".join(f"{k} {v:.4f}" for k, v in parts.items()), lr)
        return value

    def batch_loss(self, augment: SimCLRAugment, indices: torch.Tensor) -> LossTerms:
        """The method's loss on one batch of training-set positions ``indices``."""
        fast = self.fast
        with torch.no_grad():
            view_i, view_j, original = augment.views(self.images[indices])
            view_i, view_j, original = fast.images(view_i), fast.images(view_j), fast.images(original)
        adversarial = self.method.attack(self.raw_model, view_i, view_j, fast.autocast_factory(self.accelerator.autocast))
        self.model.train()
        with fast.autocast():
            return self.method.loss(self.model, (view_i, view_j), adversarial, self.progress.epoch, original=original)

    def schedule_scalars(self, epoch: int) -> dict[str, float]:
        """The method's scheduled values at ``epoch`` (0-based), logged once per epoch."""
        return {"train/strength": self.method.strength(epoch), "train/adv_weight": self.method.adv_weight(epoch)}

    def save_checkpoint(self) -> Path:
        """Accelerate's state plus progress.json, staged under a temporary name, then renamed."""
        acc = self.accelerator
        path = self.out / CHECKPOINTS / f"step_{self.progress.global_step:08d}"
        staging = path.with_name(f".{path.name}.tmp")
        acc.wait_for_everyone()
        acc.save_state(str(staging))
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_json_atomic(staging / PROGRESS_FILE, self.progress.state_dict())
            write_json_atomic(staging / CONFIG_FILE, self.config.to_dict())
            self.coreset.save(staging)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(staging, path)
            prune_checkpoints(self.out, self.config.train.keep_checkpoints)
        acc.wait_for_everyone()
        return path

    def what_it_did(self) -> dict[str, Any]:
        """What the run actually trained on, for the card: a capped or coreset epoch sees fewer images."""
        p, t = self.progress, self.config.train
        sizes = [record["size"] for record in self.coreset.history]
        return {"epochs": p.epoch, "steps": p.global_step, "batch_size": t.batch_size,
                "images_seen": p.global_step * t.batch_size, "train_images": len(self.train_set),
                "val_images": self.num_val_images, "max_steps_per_epoch": t.max_steps_per_epoch or None,
                "coreset_selections": len(sizes), "coreset_sizes": sizes,
                "parameters": sum(q.numel() for q in self.raw_model.parameters())}

    def save_model(self) -> Path:
        acc, model_dir = self.accelerator, self.out / "model"
        acc.wait_for_everyone()
        if acc.is_main_process:
            env = environment(seeds={"seed": self.config.train.seed})
            p = self.progress
            metadata = {"training": {"config": self.config.to_dict(), "seeds": env["seeds"],
                                     "versions": env["versions"], "epoch_losses": p.losses,
                                     "num_processes": acc.num_processes, "mixed_precision": acc.mixed_precision,
                                     "hardware": _describe_hardware(env["hardware"], acc),
                                     "wall_time": f"{time.time() - self.started:.0f} s (this process)",
                                     "data": {"source": self.config.data.source, "subset": self.config.data.subset,
                                              "images": len(self.train_set),
                                              "fingerprint": getattr(self.train_set, "fingerprint", None)},
                                     "run": self.what_it_did()}}
            extra_files = {"training_loss.png": loss_curve_png(p.losses, f"{self.method.label} on "
                                                                          f"{public_name(self.config.data.source)}")}
            if self.coreset.history:
                metadata["training"]["coreset_selections"] = self.coreset.history
                extra_files["coreset_selections.png"] = self._selections_plot()
            card = model_card.render(model_card.CardInputs(
                build_config(self.raw_model, metadata),
                training_plots=[(n, c) for n, c in model_card.TRAINING_PLOTS if n in extra_files]))
            self.raw_model.save_pretrained(str(model_dir), metadata=metadata, model_card=card,
                                           extra_files=extra_files)  # the command line says where, once
        acc.wait_for_everyone()
        return model_dir


def _describe_hardware(hardware: dict[str, Any], accelerator: Accelerator) -> str:
    devices = hardware.get("cuda_devices") or [f"CPU ({hardware.get('cpu_threads')} threads)"]
    return f"{accelerator.num_processes} process(es) on {', '.join(devices)}"

