"""What the suite publishes: each metric is measured on its own, one verdict decides over all of them.

Every metric (clean, gradients, PGD-20, AutoAttack, eps curve, corruptions) is a :class:`Measurement`:
a value, the flags its own measurement raised and any detail the verdict needs. :func:`decide` then
sees them together and is the only place that withholds a number. It withholds an attack's number
when that attack was misled:

- its loss has no input gradient on many correctly classified images (the logit margin for every
  gradient attack, cross-entropy for PGD);
- the attacks disagree: PGD-20 well above AutoAttack on the same images, or the black-box Square
  attack beating the white-box ones (the gradients point the wrong way);
- the model is randomised and AutoAttack's standard version (no EOT) was used.

The headline ``robust_acc`` is the lowest robust accuracy among the published attacks, so a number
the suite reports is never above the strongest attack it ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust_hub.evaluation.attacks import input_gradient_norms, margin_input_gradient_norms

MASKED_GRADIENT_THRESHOLD = 0.1  # of correctly classified images
PGD_ABOVE_AUTOATTACK_GAP = 0.10  # accuracy points on the same images; honest gaps are a few points
ZERO = 1e-12


@dataclass
class Measurement:
    value: Any
    flags: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


def cross_entropy_input_gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample L1 norm of the input gradient of cross-entropy, the loss PGD ascends."""
    return input_gradient_norms(model, x, lambda logits: F.cross_entropy(logits, y, reduction="sum"))


def measure_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Measurement:
    """Fractions of correctly classified images whose margin / cross-entropy has no input gradient."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    fractions = {"margin": 0.0, "cross_entropy": 0.0}
    if correct.any():
        xs, ys = x[correct], y[correct]
        fractions["margin"] = (margin_input_gradient_norms(model, xs, ys) <= ZERO).float().mean().item()
        fractions["cross_entropy"] = (cross_entropy_input_gradient_norms(model, xs, ys) <= ZERO).float().mean().item()
    flags = []
    if fractions["margin"] > MASKED_GRADIENT_THRESHOLD:
        flags.append("masked_gradients")
    if fractions["cross_entropy"] > MASKED_GRADIENT_THRESHOLD:
        flags.append("masked_ce_gradients")
    return Measurement(fractions, flags)


def decide(measured: dict[str, Measurement], *, eps_curve_attack: str = "pgd20",
           autoattack_version: str = "standard") -> tuple[dict[str, Any], list[str]]:
    """The published metrics and the record's flags, from every measurement at once."""
    flags = {f for m in measured.values() for f in m.flags}
    misled: dict[str, str] = {}  # metric -> why

    def mislead(why: str, *names: str) -> None:
        for name in names:
            misled.setdefault(name, why)

    curve_pgd = ("eps_curve",) if eps_curve_attack == "pgd20" else ()
    curve_aa = ("eps_curve",) if eps_curve_attack == "autoattack" else ()
    if "masked_gradients" in flags:
        mislead("masked_gradients", "pgd20", "autoattack", "eps_curve")
    if "masked_ce_gradients" in flags:
        mislead("masked_ce_gradients", "pgd20", *curve_pgd)
    if "randomized_defense" in flags and autoattack_version != "rand":
        mislead("randomized_defense", "pgd20", "autoattack", "eps_curve")
    if "square_beats_white_box" in flags:
        mislead("square_beats_white_box", "pgd20", *curve_pgd)
    pgd, aa = measured.get("pgd20"), measured.get("autoattack")
    if pgd is not None and aa is not None and pgd.value is not None and aa.value is not None:
        correct = pgd.detail["correct"][: aa.detail["n"]]
        pgd_on_aa_images = sum(correct) / len(correct)
        if pgd_on_aa_images - aa.value > PGD_ABOVE_AUTOATTACK_GAP:
            flags.add("pgd20_above_autoattack")
            mislead("pgd20_above_autoattack", "pgd20", *curve_pgd)
    if "autoattack" in misled:
        for name in curve_aa:
            mislead(misled["autoattack"], name)

    metrics: dict[str, Any] = {}
    untrusted: dict[str, Any] = {}
    for name, key in (("gradients", None), ("clean", "clean_acc"), ("pgd20", "pgd20_acc"),
                      ("autoattack", "autoattack_acc"), ("eps_curve", "eps_curve"), ("c10c", "c10c")):
        if name not in measured:
            continue
        m = measured[name]
        if name == "gradients":
            metrics["masked_gradient_fraction"] = m.value["margin"]
            metrics["masked_ce_gradient_fraction"] = m.value["cross_entropy"]
            continue
        if name == "autoattack" and m.value is not None:
            metrics["autoattack_n"] = m.detail["n"]
            metrics["autoattack_messages"] = m.detail["messages"]
        if name in misled and m.value is not None:
            untrusted[key], metrics[key] = m.value, None
        else:
            metrics[key] = m.value
    if any(measured[name].value is None for name in ("pgd20", "autoattack") if name in measured):
        flags.add("attacks_skipped")
    if untrusted or "attacks_skipped" in flags:
        flags.add("robust_acc_withheld")
    if untrusted:
        metrics["untrusted"] = untrusted
        metrics["withheld_because"] = {name: misled[name] for name in sorted(misled) if name in measured
                                       and measured[name].value is not None}
    if "pgd20" in measured or "autoattack" in measured:
        published = [metrics[k] for k in ("pgd20_acc", "autoattack_acc") if metrics.get(k) is not None]
        metrics["robust_acc"] = min(published) if published else None
    return metrics, sorted(flags)
