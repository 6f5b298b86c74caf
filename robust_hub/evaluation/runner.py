"""``evaluate``: finetune a backbone with each protocol and measure clean, PGD-20, AutoAttack and
CIFAR-10-C accuracy, writing one validated JSON record per (model, revision, protocol, dataset,
metric set) and resuming from whatever an earlier run left in ``out_dir``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from robust_hub.errors import RobustHubError
from robust_hub.provenance import hardware, library_versions
from robust_hub.evaluation.attacks import PGDConfig, margin_input_gradient_norms, parse_norm, pgd
from robust_hub.evaluation import sharding
from robust_hub.evaluation.autoattack_runner import (MASKED_GRADIENT_THRESHOLD, merge_examples, refuse_old_state,
                                                     run_autoattack)
from robust_hub.evaluation.evidence import AdversarialSet, claimed, gather, write_evidence
from robust_hub.evaluation.validate import RESULTS_KIND, STATE_DIR, resolve_device, validate_eval_arguments
from robust_hub.io import owned_subdirectory, read_marker, write_bytes_atomic, write_marker
from robust_hub.evaluation.verdict import Measurement, decide, measure_gradients
from robust_hub.evaluation.corruption_release import official_corruptions, release_for
from robust_hub.evaluation.corruptions import SEVERITIES, corruption_summary, generate_corruption_set, load_cifar10c
from robust_hub.evaluation.loading import EvalBackbone, load_backbone
from robust_hub.evaluation.presets import UNIFORM, check_preset, preset_settings
from robust_hub.evaluation.protocols import (ALL_PROTOCOLS, PROTOCOLS, Classifier, ProtocolConfig, default_protocol_config, finetune,
                                             with_overrides)
from robust_hub.evaluation.records import (DEFAULT_MAX_BYTES, METRIC_NAMES, SCHEMA_VERSION, DatasetSection, EvalRecord,
                                           ModelSection, ProtocolSection, ThreatSection, find_record, record_filename,
                                           record_key, write_record)

DATASET_ALIASES = {
    "cifar10": ("uoft-cs/cifar10", {}),
    "cifar100": ("uoft-cs/cifar100", {"label_column": "fine_label"}),
    "stl10": ("tanganke/stl10", {}),  # 32x32 or its native 96x96, per model (dataset_image_size)
}
DEFAULT_METRICS = ("clean", "pgd20", "autoattack")


@dataclass
class SplitData:
    """A labelled split as uint8 ``[N,3,H,W]`` images and int64 labels, with its provenance."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    source: str
    split: str
    fingerprint: str
    full_size: int | None = None  # images in the whole split, when this is its first ``len(images)``

    @property
    def whole_size(self) -> int:
        return self.full_size or len(self.images)

    @classmethod
    def from_dataset(cls, ds: Any, split: str | None = None) -> "SplitData":
        """From an ``ImageDataset`` of the data layer, or anything with ``images`` and ``labels``."""
        images, labels = torch.as_tensor(ds.images), torch.as_tensor(ds.labels).long()
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise RobustHubError("dataset images must be uint8 [N, 3, H, W]")
        if len(images) != len(labels):
            raise RobustHubError("dataset images and labels differ in length")
        fp = getattr(ds, "fingerprint", None) or _sha(images, labels)
        num_classes = getattr(ds, "num_classes", None) or int(labels.max()) + 1
        return cls(images, labels, int(num_classes), str(getattr(ds, "source", "in-memory")),
                   split or str(getattr(ds, "split", "unknown")), str(fp))

    def head(self, n: int | None) -> "SplitData":
        if n is None or n >= len(self.images):
            return self
        return SplitData(self.images[:n], self.labels[:n], self.num_classes, self.source, self.split, self.fingerprint,
                         self.whole_size)


def _sha(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dataset_image_size(dataset_name: str, backbone: EvalBackbone) -> int | None:
    """The size to load ``dataset_name`` at: STL-10 at its native 96x96 for models that take 96x96 images and
    at 32x32 otherwise (the benchmark's two settings); other datasets as stored (None)."""
    if dataset_name != "stl10":
        return None
    return 96 if tuple(backbone.input_size or ()) == (96, 96) else 32


def load_split(dataset: str, split: str, image_size: int | None = None, n: int | None = None) -> SplitData:
    """Load ``split`` of a dataset name (cifar10, cifar100, stl10) or any source the data layer reads,
    resized to ``image_size`` when given; with ``n``, only its first ``n`` images are decoded, named by
    the whole split's fingerprint and size as ``head(n)`` of a full load is."""
    source, kwargs = DATASET_ALIASES.get(dataset.lower(), (dataset, {}))
    kwargs = {**kwargs, "image_size": image_size} if image_size else kwargs
    try:
        from robust_hub.data import load_image_dataset  # type: ignore[attr-defined]
    except ImportError as exc:
        raise RobustHubError("this robust-hub install has no data layer (robust_hub.data.load_image_dataset)") from exc
    ds = load_image_dataset(source, split=split, limit=n, **kwargs)
    return dataclasses.replace(SplitData.from_dataset(ds, split), fingerprint=ds.split_fingerprint,
                               full_size=ds.split_size)


def _hardware(device: torch.device) -> dict:
    hw = {**hardware(), "device": str(device), "processes": sharding.world_size()}
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
    return hw


def _sharded(units: Sequence[Hashable], work: Callable[[Any], Any], desc: str, progress: bool) -> list:
    """``work(unit)`` for every unit, the units dealt among the processes; the results in ``units``' order, on
    every process. A tensor result may stay on the device until all units ran: read back once, not per unit."""
    done = {u: work(u) for u in tqdm(sharding.mine(units), desc=desc, leave=False,
                                     disable=not progress or not sharding.is_main_process())}
    done = sharding.gather({u: r.cpu() if isinstance(r, torch.Tensor) else r for u, r in done.items()})
    return [done[u] for u in units]


def _batch(images: torch.Tensor, labels: torch.Tensor, start: int, size: int,
           device) -> tuple[torch.Tensor, torch.Tensor]:
    x = images[start:start + size].float().div(255).to(device, non_blocking=True)
    return x, labels[start:start + size].to(device, non_blocking=True)


def clean_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 256,
                  device="cpu", progress: bool = False, desc: str = "clean") -> list[bool]:
    """Per uint8 image: classified correctly (batches shared among the processes of a launcher)."""
    model.eval()

    @torch.no_grad()
    def unit(start: int) -> torch.Tensor:
        x, y = _batch(images, labels, start, batch_size, device)
        return model(x).argmax(1) == y

    parts = _sharded(range(0, len(images), batch_size), unit, desc, progress)
    return torch.cat(parts).tolist() if parts else []


def accuracy(model: nn.Module, data: SplitData, *, batch_size: int = 256, device="cpu") -> float:
    """Clean top-1 accuracy of ``model`` ([0,1] images -> logits) on ``data``."""
    correct = clean_correct(model, data.images, data.labels, batch_size=batch_size, device=device)
    return sum(correct) / len(correct)


def pgd_results(model: nn.Module, data: SplitData, attack: PGDConfig, *, seed: int = 0, batch_size: int = 256,
                device="cpu", progress: bool = True) -> tuple[list[bool], AdversarialSet]:
    """Per image: classified correctly both as it is and under ``attack``; and the examples that broke a correctly
    classified image. Each batch seeds its random start from (seed, its first index): the same whichever process
    runs it.

    A misclassified test image counts as broken even when the attack's random start lands on a correct
    prediction: the image itself lies in its eps-ball (AutoAttack counts the same way), so the number never
    exceeds the bound its evidence proves (``robust-hub verify``)."""
    model.eval()

    def unit(start: int) -> tuple[torch.Tensor, AdversarialSet]:
        x, y = _batch(data.images, data.labels, start, batch_size, device)
        torch.manual_seed(sharding.unit_seed(seed, start))
        x_adv = pgd(model, x, y, attack)
        with torch.no_grad():
            clean, robust = model(x).argmax(1) == y, model(x_adv).argmax(1) == y
        broken = (clean & ~robust).cpu()
        return (clean & robust).cpu(), AdversarialSet(start + broken.nonzero().flatten(), x_adv.cpu().float()[broken])

    parts = _sharded(range(0, len(data.images), batch_size), unit, f"PGD-{attack.steps} eps={attack.eps:.4g}",
                     progress)
    if not parts:
        return [], AdversarialSet.empty(tuple(data.images.shape[1:]))
    return torch.cat([p[0] for p in parts]).tolist(), merge_examples([p[1] for p in parts])


def pgd_correct(model: nn.Module, data: SplitData, attack: PGDConfig, *, seed: int = 0, batch_size: int = 256,
                device="cpu", progress: bool = True) -> list[bool]:
    """Per image: still classified correctly under ``attack`` (seeded per batch, see :func:`pgd_results`)."""
    return pgd_results(model, data, attack, seed=seed, batch_size=batch_size, device=device, progress=progress)[0]


def pgd_accuracy(model: nn.Module, data: SplitData, attack: PGDConfig, *, seed: int = 0, batch_size: int = 256,
                 device="cpu", progress: bool = True) -> float:
    """Accuracy under ``attack`` (PGD-20 by default in :func:`evaluate`), seeded."""
    correct = pgd_correct(model, data, attack, seed=seed, batch_size=batch_size, device=device, progress=progress)
    return sum(correct) / len(correct)


def masked_gradient_fraction(model: nn.Module, data: SplitData, *, n: int = 256, device="cpu") -> float:
    """Fraction of correctly classified images (of the first ``n``) whose logit margin has no input gradient."""
    x = data.images[:n].float().div(255).to(device)
    y = data.labels[:n].to(device)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    if not ok.any():
        return 0.0
    return (margin_input_gradient_norms(model, x[ok], y[ok]) <= 1e-12).float().mean().item()


@dataclass(frozen=True)
class EvalOptions:
    """Everything :func:`evaluate` needs besides the model and the protocol list."""

    metrics: tuple[str, ...]
    norm: str
    eps: float
    seed: int
    n_train: int | None
    n_test: int | None
    n_autoattack: int | None
    eps_curve: tuple[float, ...]
    eps_curve_attack: str
    c10c_dir: str | None
    c10c_generate: bool
    c10c_n_per_severity: int | None
    autoattack_version: str
    autoattack_chunk_size: int
    batch_size: int
    device: torch.device
    progress: bool
    attack_masked_models: bool = False
    preset: str = UNIFORM
    c10c_official: str | None = None  # cifar10 / cifar100: the official release, fetched and verified on first use
    evidence_max_bytes: int = DEFAULT_MAX_BYTES  # adversarial examples kept per record (evaluation/evidence.py)


def _parse_metrics(metrics: Sequence[str] | str | None, c10c: bool) -> tuple[str, ...]:
    if metrics is None:
        metrics = DEFAULT_METRICS + (("c10c",) if c10c else ())
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(METRIC_NAMES))
    if unknown or not metrics:
        raise RobustHubError(f"unknown metrics {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRIC_NAMES)}")
    return tuple(m for m in METRIC_NAMES if m in metrics)


def _parse_protocols(protocols: Sequence[str] | str) -> list[str]:
    if isinstance(protocols, str):
        protocols = [p.strip() for p in protocols.split(",") if p.strip()]
    names = [p.lower() for p in protocols]
    bad = [p for p in names if p not in ALL_PROTOCOLS]
    if bad or not names:
        raise RobustHubError(f"unknown protocols {', '.join(bad) or '(none given)'}; choose from {', '.join(ALL_PROTOCOLS)}")
    return list(dict.fromkeys(names))


def _resolve_device(device: str | torch.device | None) -> torch.device:
    return resolve_device(device)


def _protocol_configs(names, dataset_name: str, opts: EvalOptions, overrides: dict | None,
                      image_size: int | None = None) -> list[ProtocolConfig]:
    """Each protocol's settings: the uniform defaults, then the preset's changes, then the user's overrides."""
    overrides = dict(overrides or {})
    configs = []
    for name in names:
        size = image_size or 32
        cfg = default_protocol_config(name, dataset_name, eps=opts.eps, norm=opts.norm, image_size=size)
        cfg = with_overrides(cfg, preset_settings(opts.preset, name, dataset_name, size))
        general = {k: v for k, v in overrides.items() if "." not in k or k.startswith("train_attack.")}
        specific = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith(f"{name}.")}
        if cfg.train_attack is None:
            general = {k: v for k, v in general.items() if not k.startswith("train_attack.")}
        configs.append(with_overrides(cfg, {**general, **specific}))
    unknown = [k for k in overrides if "." in k and k.split(".", 1)[0] not in (*ALL_PROTOCOLS, "train_attack")]
    if unknown:
        raise RobustHubError(f"unknown protocol override {unknown[0]!r}; use KEY=VALUE or PROTOCOL.KEY=VALUE")
    return configs


def evaluate(
    model: str | os.PathLike | nn.Module,
    *,
    protocols: Sequence[str] | str = PROTOCOLS,
    dataset: str | tuple[Any, Any] = "cifar10",
    out_dir: str | os.PathLike = "eval_results",
    revision: str | None = None,
    name: str | None = None,
    allow_pickle: bool = False,
    metrics: Sequence[str] | str | None = None,
    norm: str = "linf",
    eps: float = 8 / 255,
    eps_curve: Sequence[float] = (),
    eps_curve_attack: str = "pgd20",
    seed: int = 0,
    train_split: str = "train",
    test_split: str = "test",
    n_train: int | None = None,
    n_test: int | None = None,
    n_autoattack: int | None = None,
    protocol_overrides: dict | None = None,
    c10c_dir: str | os.PathLike | None = None,
    c10c_generate: bool = False,
    c10c_n_per_severity: int | None = None,
    autoattack_version: str = "standard",
    autoattack_chunk_size: int = 1000,
    batch_size: int = 256,
    device: str | torch.device | None = "auto",
    progress: bool = True,
    print_table: bool = True,
    attack_masked_models: bool = False,
    overwrite: bool = False,
    preset: str = UNIFORM,
    evidence_max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[dict]:
    """Evaluate ``model`` under each protocol on ``dataset``; returns the records (as dicts).

    ``dataset`` is a name (cifar10, cifar100, stl10), any source the data layer loads, or a
    ``(train, test)`` pair of datasets with ``images`` (uint8 NCHW) and ``labels``.
    A model whose input gradients vanish on more than 10% of correctly classified test images is
    flagged ``masked_gradients`` and gets no robust accuracy (``null``, flag ``robust_acc_withheld``);
    with ``attack_masked_models=True`` the attacks still run and their numbers go under
    ``metrics["untrusted"]``.
    ``name`` replaces the model id the records carry (e.g. ORG/NAME for a local directory).
    ``protocol_overrides`` maps ``KEY`` or ``PROTOCOL.KEY`` (e.g. ``"slf.epochs"``,
    ``"train_attack.steps"``) to values; they apply on top of ``preset`` (``uniform``, or the benchmark's
    per-method settings ``benchmark:<method>``). Records already in ``out_dir`` are reused, not recomputed.
    Each record's adversarial examples (and the head a verifier needs) go to ``out_dir/evidence``, at most
    ``evidence_max_bytes`` of examples per record (see :mod:`robust_hub.evaluation.evidence`).
    """
    t_start = time.perf_counter()
    validate_eval_arguments(out_dir=out_dir, n_train=n_train, n_test=n_test, n_autoattack=n_autoattack,
                            batch_size=batch_size, autoattack_chunk_size=autoattack_chunk_size, c10c_dir=c10c_dir,
                            c10c_n_per_severity=c10c_n_per_severity, overwrite=overwrite)
    names = _parse_protocols(protocols)
    if c10c_dir is not None and c10c_generate:
        raise RobustHubError("give either a CIFAR-10-C directory or --c10c-generate, not both")
    if eps_curve_attack not in ("pgd20", "autoattack"):
        raise RobustHubError("eps_curve_attack must be pgd20 or autoattack")
    opts = EvalOptions(_parse_metrics(metrics, c10c_dir is not None or c10c_generate), parse_norm(norm), float(eps),
                       int(seed), n_train, n_test, n_autoattack, tuple(float(e) for e in eps_curve), eps_curve_attack,
                       None if c10c_dir is None else str(c10c_dir), bool(c10c_generate), c10c_n_per_severity,
                       autoattack_version, autoattack_chunk_size, batch_size,
                       sharding.process_device(_resolve_device(device)), progress and sharding.is_main_process(),
                       attack_masked_models, check_preset(preset), evidence_max_bytes=evidence_max_bytes)
    if isinstance(evidence_max_bytes, bool) or not isinstance(evidence_max_bytes, int) or evidence_max_bytes < 0:
        raise RobustHubError(f"--evidence-max-bytes must be a non-negative integer, got {evidence_max_bytes!r}")
    if opts.eps < 0 or any(e < 0 for e in opts.eps_curve):
        raise RobustHubError("eps must be non-negative")
    if opts.norm == "linf" and max([opts.eps, *opts.eps_curve]) > 1:
        raise RobustHubError("an L-inf eps is in [0,1] pixel units (e.g. 8/255); got more than 1")
    if "c10c" in opts.metrics and opts.c10c_dir is None and not opts.c10c_generate:
        opts = dataclasses.replace(opts, c10c_official=_official_corruption_key(dataset))  # an error if none exists
    dataset_name = dataset.lower() if isinstance(dataset, str) else "custom"
    configs = _protocol_configs(names, dataset_name, opts, protocol_overrides)  # checked before any work

    t0 = time.perf_counter()
    # the main process downloads and caches first; the others then read its cache
    backbone = sharding.main_first(lambda: load_backbone(model, revision=revision, allow_pickle=allow_pickle))
    if name is not None:  # the records name the model as given (a leaderboard's ORG/NAME), not by its path
        backbone.info = dataclasses.replace(backbone.info, id=name)
    image_size = dataset_image_size(dataset_name, backbone)
    configs = _protocol_configs(names, dataset_name, opts, protocol_overrides, image_size)
    if isinstance(dataset, str):
        train, test = sharding.main_first(lambda: (load_split(dataset, train_split, image_size, opts.n_train),
                                                   load_split(dataset, test_split, image_size, opts.n_test)))
    else:
        train, test = SplitData.from_dataset(dataset[0], train_split), SplitData.from_dataset(dataset[1], test_split)
    train, test = train.head(opts.n_train), test.head(opts.n_test)
    num_classes = max(train.num_classes, test.num_classes)
    load_time = time.perf_counter() - t0

    out = Path(out_dir)
    records = []
    for cfg in tqdm(configs, desc="protocols", disable=not opts.progress):
        records.append(_evaluate_protocol(backbone, cfg, train, test, num_classes, opts, out, load_time).to_dict())
    if print_table and sharding.is_main_process():
        print(format_table(records))
    if opts.progress:
        print(f"{len(records)} record(s) in {out} ({time.perf_counter() - t_start:.1f} s)")
    return records


def _settings_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _evaluate_protocol(backbone: EvalBackbone, cfg: ProtocolConfig, train: SplitData, test: SplitData, num_classes: int,
                       opts: EvalOptions, out: Path, load_time: float) -> EvalRecord:
    info = backbone.info
    key = record_key(info.id, info.revision, cfg.name, test.source, list(opts.metrics), opts.norm, opts.eps)
    settings = {**cfg.to_dict(), "preset": opts.preset, "image_size": int(test.images.shape[-1]),
                "eval": {**_eval_settings(opts), "full_sizes": {"train": train.whole_size, "test": test.whole_size}}}
    dataset = DatasetSection(test.source, test.split, test.fingerprint, num_classes, train.split, train.fingerprint,
                             len(train.images), len(test.images))
    seeds = {"finetune": opts.seed, "attack": opts.seed}
    existing = find_record(out, key)
    if existing is not None:
        if existing.protocol.settings != json.loads(json.dumps(settings)) or existing.dataset != dataset or existing.seeds != seeds:
            raise RobustHubError(f"{out / record_filename(key)} holds a result for this model, protocol, dataset and "
                                 "metrics made with other settings; use another --out or delete that file")
        return existing

    if sharding.is_main_process() and read_marker(out) is None:  # robust-hub owns this directory from its first file on
        write_marker(out, RESULTS_KIND, files=[STATE_DIR])
    sharding.barrier()
    state_dir = owned_subdirectory(out, STATE_DIR)
    stem = Path(record_filename(key)).stem + "_" + _settings_hash(settings, dataset.train_fingerprint, seeds)
    walls: dict[str, float] = {"load": load_time}
    classifier, walls["finetune"] = _finetuned(backbone, cfg, train, num_classes, opts, state_dir / f"{stem}.classifier.safetensors")
    measured: dict[str, Measurement] = {}
    metrics, flags = _measure(classifier, test, opts, state_dir, stem, walls, measured)
    walls["total"] = sum(walls.values())
    record = EvalRecord(
        schema_version=SCHEMA_VERSION,
        model=ModelSection(**info.to_dict()),
        protocol=ProtocolSection(cfg.name, settings),
        dataset=dataset,
        metric_set=list(opts.metrics),
        threat=ThreatSection(opts.norm, opts.eps),
        metrics=metrics,
        seeds=seeds,
        versions=library_versions(),
        hardware=_hardware(opts.device),
        wall_time_s={k: round(v, 3) for k, v in walls.items()},
        flags=sorted(set(flags) | set(info.flags)),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    record = json.loads(json.dumps(record.to_dict()))  # normalise tuples etc. exactly as stored
    if sharding.is_main_process():  # one record and its evidence, written once
        record["evidence"] = _evidence(out, key, cfg, opts, classifier, measured, record)
    record = EvalRecord.from_dict(record)
    if sharding.is_main_process():
        write_record(record, out)
    sharding.barrier()
    return record


def _eval_settings(opts: EvalOptions) -> dict:
    return {"pgd20": {"steps": 20, "alpha": opts.eps / 4, "random_start": True}, "autoattack_version": opts.autoattack_version,
            "n_autoattack": opts.n_autoattack, "eps_curve": list(opts.eps_curve), "eps_curve_attack": opts.eps_curve_attack,
            "c10c_dir": opts.c10c_dir, "c10c_generate": opts.c10c_generate,
            "c10c_n_per_severity": opts.c10c_n_per_severity, "attack_masked_models": opts.attack_masked_models,
            "units": {"batch": opts.batch_size, "autoattack_chunk": opts.autoattack_chunk_size,
                      "seeding": sharding.UNIT_SEEDING},
            **({"c10c_official": opts.c10c_official} if opts.c10c_official else {})}


def _evidence(out: Path, key: tuple, cfg: ProtocolConfig, opts: EvalOptions, classifier: Classifier,
              measured: dict[str, Measurement], record: dict) -> dict:
    """The examples behind each published robust number, written beside the record (the record's section)."""
    sets = gather(measured, record["metrics"])
    claims = {name: claimed(record, name)[1:] for name in sets}
    return write_evidence(out, key, cfg.name, opts.norm, classifier, sets, claims, opts.evidence_max_bytes)


def _finetuned(backbone, cfg, train, num_classes, opts, ckpt: Path) -> tuple[Classifier, float]:
    from safetensors.torch import load_file, save

    # Finetuning runs on the main process alone and the others load its classifier: DDP would change the computation
    # (BatchNorm statistics per process, reduction order), so the classifier, and every number measured on it, would
    # depend on the process count. The other processes wait in a barrier (sharding.WAIT_TIMEOUT).
    t0 = time.perf_counter()
    if sharding.is_main_process() and not ckpt.exists():
        classifier = finetune(backbone, backbone.num_features, train.images, train.labels, num_classes, cfg,
                              seed=opts.seed, device=opts.device, progress=opts.progress)
        write_bytes_atomic(ckpt, save({k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}))
        sharding.barrier()
        return classifier, time.perf_counter() - t0
    sharding.barrier()
    classifier = Classifier(copy.deepcopy(backbone), backbone.num_features, num_classes)
    try:
        classifier.load_state_dict(load_file(str(ckpt)))
    except Exception as exc:  # safetensors and load_state_dict raise several types for a bad file
        raise RobustHubError(f"cannot resume from {ckpt} ({exc}); delete it to finetune again") from exc
    return classifier.to(opts.device).eval(), 0.0


def _measure(classifier: Classifier, test: SplitData, opts: EvalOptions, state_dir: Path, stem: str,
             walls: dict, measured: dict[str, Measurement] | None = None) -> tuple[dict, list[str]]:
    """Each metric measured on its own (value + flags); :func:`verdict.decide` publishes or withholds.
    ``measured`` (filled in) keeps each measurement's detail, e.g. the adversarial examples for the evidence."""
    measured = {} if measured is None else measured
    dev, bs = opts.device, opts.batch_size
    t0 = time.perf_counter()
    probe = test.head(256)
    measured["gradients"] = measure_gradients(classifier, probe.images.float().div(255).to(dev), probe.labels.to(dev))
    if "clean" in opts.metrics:
        correct = clean_correct(classifier, test.images, test.labels, batch_size=bs, device=dev)
        measured["clean"] = Measurement(sum(correct) / len(correct), [], {"correct": correct})
    walls["clean"] = time.perf_counter() - t0
    # with no margin gradient, no gradient attack can be trusted: skip them unless asked to run them anyway
    skip_attacks = "masked_gradients" in measured["gradients"].flags and not opts.attack_masked_models
    skip_attacks = sharding.same_everywhere(skip_attacks)  # every process takes the same branch
    if skip_attacks:
        measured.update({m: Measurement(None) for m in ("pgd20", "autoattack") if m in opts.metrics})
    else:
        _measure_attacks(classifier, test, opts, state_dir, stem, walls, measured)
    if "c10c" in opts.metrics:
        t0 = time.perf_counter()
        c10c, correct = _c10c(classifier, test, opts)
        flags = ["generated_corruptions"] if c10c["generated"] else []
        measured["c10c"] = Measurement(c10c, flags, {"correct": correct})
        walls["c10c"] = time.perf_counter() - t0
    return decide(measured, eps_curve_attack=opts.eps_curve_attack, autoattack_version=opts.autoattack_version)


def _measure_attacks(classifier: Classifier, test: SplitData, opts: EvalOptions, state_dir: Path, stem: str,
                     walls: dict, measured: dict[str, Measurement]) -> None:
    dev, bs = opts.device, opts.batch_size
    if "pgd20" in opts.metrics:
        t0 = time.perf_counter()
        attack = PGDConfig(eps=opts.eps, alpha=opts.eps / 4, steps=20, norm=opts.norm, random_start=True)
        correct, adversarial = pgd_results(classifier, test, attack, seed=opts.seed, batch_size=bs, device=dev,
                                           progress=opts.progress)
        measured["pgd20"] = Measurement(sum(correct) / len(correct), [],
                                        {"correct": correct, "adversarial": adversarial})
        walls["pgd20"] = time.perf_counter() - t0
    aa_data = test.head(opts.n_autoattack)
    if "autoattack" in opts.metrics:
        t0 = time.perf_counter()
        res = _autoattack(classifier, aa_data, opts, opts.eps, state_dir, f"{stem}.autoattack")
        subset = ["autoattack_subset"] if len(aa_data.images) < len(test.images) else []
        measured["autoattack"] = Measurement(res.robust_acc, res.flags + subset, {
            "n": res.n, "messages": res.messages, "robust": res.robust, "adversarial": res.adversarial})
        walls["autoattack"] = time.perf_counter() - t0
    if opts.eps_curve:
        t0 = time.perf_counter()
        curve, flags, examples, robust = {}, [], {}, {}
        for e in opts.eps_curve:
            key = f"{e:.8g}"
            if opts.eps_curve_attack == "pgd20":
                cfg = PGDConfig(eps=e, alpha=e / 4, steps=20, norm=opts.norm, random_start=True)
                robust[key], examples[key] = pgd_results(classifier, test, cfg, seed=opts.seed, batch_size=bs,
                                                         device=dev, progress=opts.progress)
            else:
                res = _autoattack(classifier, aa_data, opts, e, state_dir, f"{stem}.autoattack-eps{e:.6g}")
                robust[key], examples[key] = res.robust, res.adversarial
                flags += res.flags
            curve[key] = sum(robust[key]) / len(robust[key])
        measured["eps_curve"] = Measurement({opts.eps_curve_attack: curve}, flags,
                                            {"adversarial_curve": examples, "robust_curve": robust})
        walls["eps_curve"] = time.perf_counter() - t0


def _autoattack(classifier, data: SplitData, opts: EvalOptions, eps: float, state_dir: Path, name: str):
    for old in sorted(state_dir.glob(name.rsplit("_", 1)[0] + "_*.autoattack*.json")):  # under any settings hash
        refuse_old_state(old)
    return run_autoattack(classifier, data.images.float().div(255), data.labels, eps=eps, norm=opts.norm,
                          seed=opts.seed, version=opts.autoattack_version, batch_size=opts.batch_size,
                          chunk_size=opts.autoattack_chunk_size, state_dir=owned_subdirectory(state_dir, name),
                          device=opts.device, progress=opts.progress)


def _official_corruption_key(dataset) -> str:
    """cifar10 or cifar100 for those datasets (by name or Hub id); any other dataset is an error naming the options."""
    name = dataset.lower() if isinstance(dataset, str) else "custom"
    key = next((alias for alias, (hub_id, _) in DATASET_ALIASES.items() if name == hub_id), name)
    release_for(key)  # no official set: an error naming --c10c-dir and --c10c-generate
    return key


def _c10c(classifier, test: SplitData, opts: EvalOptions) -> tuple[dict, dict]:
    """The corruption accuracies, and per corruption and severity which images were classified correctly; the
    batches of every corruption and severity are shared among the processes."""
    if opts.c10c_generate:
        keep = slice(None, opts.c10c_n_per_severity)  # the first N test images, as for the official files
        cset = generate_corruption_set(test.images[keep], test.labels[keep], seed=opts.seed,
                                       source=f"generated from {test.source}:{test.split}")
    else:
        root = opts.c10c_dir or sharding.main_first(
            lambda: official_corruptions(opts.c10c_official, progress=opts.progress))  # one download
        cset = load_cifar10c(root, n_per_severity=opts.c10c_n_per_severity)
        if int(cset.labels.max()) >= classifier.head.out_features:
            raise RobustHubError(f"{root} has labels beyond the {classifier.head.out_features} classes of {test.source}")
    classifier.eval()
    bs, n = opts.batch_size, len(cset.labels)
    units = [(name, sev, start) for name in cset.images for sev in SEVERITIES for start in range(0, n, bs)]

    @torch.no_grad()
    def unit(u: tuple[str, int, int]) -> torch.Tensor:
        x, y = _batch(cset.images[u[0]][u[1]], cset.labels, u[2], bs, opts.device)
        return classifier(x).argmax(1) == y

    done = dict(zip(units, _sharded(units, unit, "CIFAR-10-C", opts.progress)))
    correct = {name: {str(sev): torch.cat([done[(name, sev, s)] for s in range(0, n, bs)]).tolist()
                      for sev in SEVERITIES} for name in cset.images}
    per = {name: {sev: sum(c) / len(c) for sev, c in by_sev.items()} for name, by_sev in correct.items()}
    return corruption_summary(per, cset), correct


# ----------------------------------------------------------------------------------------- table
def _pct(v: Any) -> str:
    return "withheld" if v is None else f"{100 * v:.2f}"


def _model_name(model_id: str) -> str:
    """A Hub id as it is; a local directory by its path from here (its folder name alone is usually "model")."""
    path = Path(model_id)
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        return str(path.relative_to(Path.cwd()))
    return model_id


def format_table(records: list[dict]) -> str:
    """A plain-text table of the records' headline numbers (accuracies in %)."""
    header = ["model", "protocol", "dataset", "threat", "clean", "PGD-20", "AutoAttack", "C10-C", "flags"]
    rows = [header]
    for r in records:
        m = r["metrics"]
        eps = r["threat"]["eps"]
        threat = f"{r['threat']['norm']} {eps * 255:.3g}/255" if r["threat"]["norm"] == "linf" else f"l2 {eps:.3g}"
        c10c = m.get("c10c")
        rows.append([
            _model_name(r["model"]["id"]), r["protocol"]["name"], Path(r["dataset"]["source"]).name,
            threat, _pct(m["clean_acc"]) if "clean_acc" in m else "-", _pct(m["pgd20_acc"]) if "pgd20_acc" in m else "-",
            _pct(m["autoattack_acc"]) if "autoattack_acc" in m else "-",
            (_pct(c10c["mean"]) + ("*" if c10c["generated"] else "")) if c10c else "-",
            ",".join(r["flags"]) or "-",
        ])
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any(r["metrics"].get("c10c") and r["metrics"]["c10c"]["generated"] for r in records):
        lines.append("* corruption accuracy on a generated set, not the official CIFAR-10-C files")
    return "\n".join(lines)
