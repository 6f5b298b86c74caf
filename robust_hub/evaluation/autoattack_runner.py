"""AutoAttack through the reference code (``pyautoattack``), resumable, with its warnings as flags.

The test set is processed in chunks; after each chunk the per-image clean and robust flags and the
warnings the reference code raised are written atomically to a JSON state file, so an interrupted
run skips the finished chunks. Within a chunk the reference ``run_standard_evaluation`` runs
unchanged, so a chunk gives exactly what a direct call with the same seed and batch size gives.

Besides the reference checks, every chunk measures the input gradient of the logit margin on the
correctly classified images; when more than ``MASKED_GRADIENT_THRESHOLD`` of them have none, the
model masks its gradients and its robust accuracy is not trustworthy (``trusted=False``).
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.attacks import margin_input_gradient_norms, parse_norm
from robust_hub.evaluation.records import atomic_write_json, read_json

STATE_SCHEMA = "robust-hub-autoattack-state/1"
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
        _, y_adv = adversary.run_standard_evaluation(x.to(device), y.to(device), batch_size=batch_size)
    with torch.no_grad():
        clean = torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    clean = clean == y
    robust = y_adv.cpu() == y
    grad_norms = margin_input_gradient_norms(model, x[clean].to(device), y[clean].to(device)) if clean.any() else torch.zeros(0)
    return {
        "clean": clean.tolist(),
        "robust": robust.tolist(),
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
    state_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> AutoAttackResult:
    """Run AutoAttack on ``model`` (maps [0,1] images to logits) over ``(x, y)`` chunk by chunk."""
    norm = parse_norm(norm)
    if eps < 0:
        raise RobustHubError("AutoAttack eps must be non-negative")
    if len(x) == 0:
        raise RobustHubError("AutoAttack needs at least one image")
    model.eval()
    key = {"eps": eps, "norm": norm, "seed": seed, "version": version, "batch_size": batch_size,
           "chunk_size": chunk_size, "data_sha256": _tensor_sha(x, y), "model_sha256": _tensor_sha(
               *[t for _, t in sorted(model.state_dict().items())])}
    state = _load_state(state_path, key)
    starts = list(range(0, len(x), chunk_size))
    todo = [s for s in starts if str(s) not in state["chunks"]]
    for start in tqdm(todo, desc=f"AutoAttack {norm} eps={eps:.4g}", disable=not progress, leave=False):
        xc, yc = x[start:start + chunk_size], y[start:start + chunk_size]
        state["chunks"][str(start)] = _attack_chunk(model, xc, yc, norm=norm, eps=eps, seed=seed,
                                                    version=version, batch_size=batch_size, device=device)
        if state_path is not None:
            atomic_write_json(state_path, state)
    return _summarise([state["chunks"][str(s)] for s in starts])


def _load_state(state_path, key: dict) -> dict:
    fresh = {"schema": STATE_SCHEMA, "key": key, "chunks": {}}
    if state_path is None or not Path(state_path).exists():
        return fresh
    state = read_json(state_path)
    if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA or not isinstance(state.get("chunks"), dict):
        raise RobustHubError(f"{state_path} is not a robust-hub AutoAttack state file; delete it to start over")
    if state.get("key") != key:
        raise RobustHubError(f"{state_path} was written for a different model, data or attack; delete it to start over")
    return state


def _summarise(chunks: list[dict]) -> AutoAttackResult:
    clean = [c for ch in chunks for c in ch["clean"]]
    robust = [r for ch in chunks for r in ch["robust"]]
    messages = list(dict.fromkeys(m for ch in chunks for m in ch["messages"]))
    n_correct = sum(ch["n_clean_correct"] for ch in chunks)
    masked = sum(ch["zero_margin_grad"] for ch in chunks) / n_correct if n_correct else 0.0
    flags = flags_from_messages(messages)
    trusted = masked <= MASKED_GRADIENT_THRESHOLD
    if not trusted:
        flags.append("masked_gradients")
    return AutoAttackResult(clean_acc=sum(clean) / len(clean), robust_acc=sum(robust) / len(robust), n=len(clean),
                            flags=sorted(set(flags)), messages=messages, masked_fraction=masked, trusted=trusted,
                            robust=robust)
