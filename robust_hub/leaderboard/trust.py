"""Whether a record's robust accuracy may be ranked: the one place the leaderboard reads the suite's verdict.

The evaluation suite decides what it measured, flags what looks wrong and withholds what it cannot trust
(``flags`` and ``null`` robust accuracies in the record). This adapter turns that into rank / do-not-rank, and
fails safe: any flag it does not know to be harmless keeps a score unranked, so a new detector added to the suite
(a new flag name) is honoured without touching the leaderboard. On top it applies checks that need no attack at
all and that a masked, shattered or random gradient tends to break.
"""

from __future__ import annotations

from typing import Any

# Flags that describe how a number was measured, not whether it can be trusted.
HARMLESS_FLAGS = frozenset({"generated_corruptions", "autoattack_subset"})
# PGD-20 is one of AutoAttack's weaker cousins: far above AutoAttack means its gradients misled it.
PGD_ABOVE_AUTOATTACK = 0.05


def ranking_score(record: dict[str, Any]) -> float | None:
    """The number a table ranks by: AutoAttack robust accuracy."""
    return record["metrics"].get("autoattack_acc")


def verdict(record: dict[str, Any]) -> tuple[bool, list[str]]:
    """(rankable, reasons it is not)."""
    metrics, reasons = record["metrics"], []
    reasons += [f for f in record.get("flags", []) if f not in HARMLESS_FLAGS]
    clean, pgd, aa = metrics.get("clean_acc"), metrics.get("pgd20_acc"), metrics.get("autoattack_acc")
    if "autoattack" not in record.get("metric_set", []):
        reasons.append("no_autoattack")
    elif aa is None:
        reasons.append("autoattack_withheld")
    if pgd is not None and aa is not None and pgd - aa > PGD_ABOVE_AUTOATTACK:
        reasons.append("pgd20_far_above_autoattack")
    if clean is not None and any(v is not None and v > clean for v in (pgd, aa)):
        reasons.append("robust_above_clean")
    return not reasons, sorted(set(reasons))
