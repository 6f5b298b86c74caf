"""AutoAttack through the reference code (``pyautoattack``), resumable, with its warnings as flags.

The test set is processed in chunks of fixed index ranges; each finished chunk's per-image clean and
robust flags, its adversarial examples and the warnings the reference code raised are written atomically
to a file of its own (safetensors, named by the chunk's first image, holding the attack's key), so an
interrupted run skips the finished chunks, and several processes (:mod:`sharding`) share the chunks without
write races, whatever their number. Within a chunk the reference ``run_standard_evaluation`` runs
unchanged, so a chunk gives exactly what a direct call with the same seed and batch size gives.

Besides the reference checks, every chunk measures the input gradient of the logit margin on the
correctly classified images; when more than ``MASKED_GRADIENT_THRESHOLD`` of them have none, the
model masks its gradients and its robust accuracy is not trustworthy (``trusted=False``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from robust_hub.errors import RobustHubError
from robust_hub.evaluation import sharding
from robust_hub.evaluation.attacks import margin_input_gradient_norms, parse_norm
from robust_hub.evaluation.evidence import AdversarialSet
from robust_hub.io import write_bytes_atomic

STATE_SCHEMA = "robust-hub-autoattack-chunk/2"
MASKED_GRADIENT_THRESHOLD = 0.1
AA_NORMS = {"linf": "Linf", "l2": "L2"}
# substrings of the reference code's warning messages -> the flag a result carries
WARNING_FLAGS = {
    "zero gradient": "zero_gradients",
    "randomized defense": "randomized_defense",
    "Square Attack has decreased": "square_beats_white_box",
    "probability distribution": "probability_output",
    "dynamic defense": "dynamic_defense",
    "target classes": "too_few_classes",
    "DLR loss": "too_few_classes",
}


def import_autoattack():
    """The reference AutoAttack class (package ``pyautoattack``, historically ``autoattack``)."""
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        try:
            from autoattack import AutoAttack  # type: ignore[no-redef]
        except ImportError as exc:
            raise RobustHubError("AutoAttack needs the reference code: pip install pyautoattack") from exc
    return AutoAttack


@dataclass
class AutoAttackResult:
    clean_acc: float
    robust_acc: float
    n: int
    flags: list[str]
    messages: list[str]
    masked_fraction: float
    trusted: bool
    robust: list[bool] = field(repr=False, default_factory=list)
    clean: list[bool] = field(repr=False, default_factory=list)
    adversarial: AdversarialSet = field(repr=False, default_factory=AdversarialSet.empty)


class AttackLog:
    """Stands in for the reference code's ``logging.getLogger('auto-attack')`` on one adversary.

    The reference checks report through ``logger.warning`` (or ``warnings.warn`` when given no
    logger). Handing each attack this object instead of the shared logger collects every warning
    whatever the program's logging configuration is (``logging.disable``, no handlers, levels).
    """

    def __init__(self) -> None:
        self.messages: list[str] = []

    def warning(self, message, *args, **kwargs) -> None:
        self.messages.append(str(message) % args if args else str(message))

    warn = error = critical = warning

    def debug(self, *args, **kwargs) -> None:
        pass

    info = debug


def attach_attack_log(adversary) -> AttackLog:
    """Route every warning of ``adversary`` (and its APGD attacks) into a fresh :class:`AttackLog`."""
    log = AttackLog()
    adversary.logger = log
    for name in ("apgd", "apgd_targeted"):
        attack = getattr(adversary, name, None)
        if attack is not None and hasattr(attack, "logger"):
            attack.logger = log
    return log


@contextlib.contextmanager
def capture_python_warnings():
    """What the reference code reports through ``warnings`` (attacks built with no logger)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        messages: list[str] = []
        yield messages
        messages.extend(str(w.message) for w in caught)


def flags_from_messages(messages: list[str]) -> list[str]:
    return sorted({flag for m in messages for key, flag in WARNING_FLAGS.items() if key in m})


def _tensor_sha(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _attack_chunk(model, x, y, *, norm, eps, seed, version, batch_size, device) -> dict:
    AutoAttack = import_autoattack()
    with torch.no_grad():
        logits = model(x[:1].to(device))
    n_cls = logits.shape[1]
    with capture_python_warnings() as python_warnings:
        adversary = AutoAttack(model, norm=AA_NORMS[norm], eps=eps, version=version, seed=seed, device=device)
        attack_log = attach_attack_log(adversary)
        if n_cls <= 10:  # the standard version targets 9 classes; fewer exist on small label sets
            adversary.apgd_targeted.n_target_classes = max(1, n_cls - 1)
            adversary.fab.n_target_classes = max(1, n_cls - 1)
        x_adv, y_adv = adversary.run_standard_evaluation(x.to(device), y.to(device), batch_size=batch_size)
    with torch.no_grad():
        clean = torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    clean = clean == y
    robust = y_adv.cpu() == y
    grad_norms = margin_input_gradient_norms(model, x[clean].to(device), y[clean].to(device)) if clean.any() else torch.zeros(0)
    broken = clean & ~robust  # a misclassified clean image needs no example: the test image proves it
    return {
        "clean": clean.tolist(),
        "robust": robust.tolist(),
        "adversarial": AdversarialSet(broken.nonzero().flatten(), x_adv.detach().cpu().float()[broken]),
        "messages": list(dict.fromkeys(attack_log.messages + python_warnings)),
        "zero_margin_grad": int((grad_norms <= 1e-12).sum()),
        "n_clean_correct": int(clean.sum()),
    }


def run_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = 8 / 255,
    norm: str = "linf",
    seed: int = 0,
    version: str = "standard",
    batch_size: int = 250,
    chunk_size: int = 1000,
    state_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> AutoAttackResult:
    """Run AutoAttack on ``model`` (maps [0,1] images to logits) over ``(x, y)`` chunk by chunk, the chunks
    shared among the processes of a launcher; with ``state_dir``, finished chunks are kept there and skipped."""
    norm = parse_norm(norm)
    if eps < 0:
        raise RobustHubError("AutoAttack eps must be non-negative")
    if len(x) == 0:
        raise RobustHubError("AutoAttack needs at least one image")
    model.eval()
    key = {"eps": eps, "norm": norm, "seed": seed, "version": version, "batch_size": batch_size,
           "chunk_size": chunk_size, "data_sha256": _tensor_sha(x, y), "model_sha256": _tensor_sha(
               *[t for _, t in sorted(model.state_dict().items())])}
    store = ChunkStore(Path(state_dir), key) if state_dir is not None else None
    starts = list(range(0, len(x), chunk_size))
    chunks = {s: store.load(s, len(x[s:s + chunk_size]), x.shape[1:]) for s in starts if store and store.has(s)}
    todo = [s for s in starts if s not in chunks]
    sharding.barrier()  # every process has listed the finished chunks before any process writes a new one
    computed = {}
    for start in tqdm(sharding.mine(todo), desc=f"AutoAttack {norm} eps={eps:.4g}",
                      disable=not progress or not sharding.is_main_process(), leave=False):
        xc, yc = x[start:start + chunk_size], y[start:start + chunk_size]
        computed[start] = _attack_chunk(model, xc, yc, norm=norm, eps=eps, seed=seed, version=version,
                                        batch_size=batch_size, device=device)
        if store is not None:
            store.save(start, computed[start])
    chunks.update(sharding.gather(computed))
    return _summarise([(s, chunks[s]) for s in starts])


def refuse_old_state(path: Path) -> None:
    """An older robust-hub's state (one JSON file for every chunk) holds no adversarial examples: it is not read."""
    raise RobustHubError(f"{path} is an AutoAttack state of an older robust-hub (one file, no adversarial examples); "
                         "delete it to attack again")


class ChunkStore:
    """Finished chunks as ``chunk-<first image>.safetensors`` in one directory per attack: per-image flags and
    adversarial examples as tensors, the rest (key, warnings, counts) as JSON metadata. Never pickle."""

    def __init__(self, root: Path, key: dict) -> None:
        if root.is_file():
            refuse_old_state(root)
        self.root, self.key = root, json.dumps(key, sort_keys=True)

    def path(self, start: int) -> Path:
        return self.root / f"chunk-{start:09d}.safetensors"

    def has(self, start: int) -> bool:
        return self.path(start).is_file()

    def save(self, start: int, chunk: dict) -> None:
        from safetensors.torch import save

        adv: AdversarialSet = chunk["adversarial"]
        tensors = {"clean": torch.tensor(chunk["clean"], dtype=torch.uint8),
                   "robust": torch.tensor(chunk["robust"], dtype=torch.uint8),
                   "adversarial_indices": adv.indices.long().contiguous(),
                   "adversarial_images": adv.images.float().contiguous()}
        meta = {"schema": STATE_SCHEMA, "key": self.key, "messages": json.dumps(chunk["messages"]),
                "zero_margin_grad": str(chunk["zero_margin_grad"]), "n_clean_correct": str(chunk["n_clean_correct"])}
        write_bytes_atomic(self.path(start), save(tensors, metadata=meta))

    def load(self, start: int, n: int, image_shape: torch.Size) -> dict:
        from safetensors import safe_open

        path = self.path(start)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if meta.get("schema") != STATE_SCHEMA:
                raise ValueError("not a robust-hub AutoAttack chunk")
            if meta.get("key") != self.key:
                raise RobustHubError(f"{path} was written for a different model, data or attack; delete {self.root} "
                                     "to start over")
            adv = AdversarialSet(tensors["adversarial_indices"], tensors["adversarial_images"])
            clean, robust = tensors["clean"].bool(), tensors["robust"].bool()
            if clean.shape != (n,) or robust.shape != (n,) or adv.images.shape[1:] != image_shape \
                    or len(adv.indices) != len(adv.images) or not ((adv.indices >= 0) & (adv.indices < n)).all():
                raise ValueError("shapes do not fit the chunk")
            return {"clean": clean.tolist(), "robust": robust.tolist(), "adversarial": adv,
                    "messages": json.loads(meta["messages"]), "zero_margin_grad": int(meta["zero_margin_grad"]),
                    "n_clean_correct": int(meta["n_clean_correct"])}
        except RobustHubError:
            raise
        except Exception as exc:  # safetensors, json and int() raise several types for a damaged file
            raise RobustHubError(f"{path} is not a readable AutoAttack chunk ({exc}); delete it to attack that "
                                 "chunk again") from exc


def merge_examples(parts: list[AdversarialSet]) -> AdversarialSet:
    """``AdversarialSet.concat`` that keeps the image shape when no part holds an example."""
    return AdversarialSet.concat(parts) if any(len(p.indices) for p in parts) else parts[0]


def _summarise(chunks: list[tuple[int, dict]]) -> AutoAttackResult:
    clean = [c for _, ch in chunks for c in ch["clean"]]
    robust = [r for _, ch in chunks for r in ch["robust"]]
    adversarial = merge_examples([AdversarialSet(ch["adversarial"].indices + start, ch["adversarial"].images)
                                  for start, ch in chunks])
    messages = list(dict.fromkeys(m for _, ch in chunks for m in ch["messages"]))
    n_correct = sum(ch["n_clean_correct"] for _, ch in chunks)
    masked = sum(ch["zero_margin_grad"] for _, ch in chunks) / n_correct if n_correct else 0.0
    flags = flags_from_messages(messages)
    trusted = masked <= MASKED_GRADIENT_THRESHOLD
    if not trusted:
        flags.append("masked_gradients")
    return AutoAttackResult(clean_acc=sum(clean) / len(clean), robust_acc=sum(robust) / len(robust), n=len(clean),
                            flags=sorted(set(flags)), messages=messages, masked_fraction=masked, trusted=trusted,
                            robust=robust, clean=clean, adversarial=adversarial)
