"""Put verified evaluation results into a saved backbone's model card."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.loading import sha256_file
from robust_hub.evaluation.presets import preset_note
from robust_hub.evaluation.records import load_records
from robust_hub.io import write_text_atomic

SECTION = re.compile(r"(^## Evaluation\n)(.*?)(?=^## |\Z)", flags=re.S | re.M)


def _pct(value: Any) -> str:
    return "withheld" if value is None else f"{100 * value:.2f}"


def evaluation_markdown(records: list[dict[str, Any]]) -> str:
    """A markdown table of the records' headline numbers (accuracy, %)."""
    lines = ["| protocol | dataset | threat | clean | PGD-20 | AutoAttack | CIFAR-10-C | flags |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["dataset"]["source"], r["protocol"]["name"])):
        m, t = r["metrics"], r["threat"]
        c10c = m.get("c10c")
        corruption = "" if not c10c else _pct(c10c["mean"]) + (" (generated set)" if c10c.get("generated") else "")
        lines.append(
            f"| {r['protocol']['name'].upper()} (epochs {r['protocol']['settings'].get('epochs')}{preset_note(r)}) "
            f"| {r['dataset']['source']} ({r['dataset'].get('n_test', '?')} test images) "
            f"| {t['norm']} {t['eps'] * 255:g}/255 | {_pct(m.get('clean_acc'))} | {_pct(m.get('pgd20_acc'))} "
            f"| {_pct(m.get('autoattack_acc'))} | {corruption} | {', '.join(r['flags']) or '-'} |")
    lines.append("")
    lines.append("Numbers from `robust-hub eval`; each row's JSON record (protocol settings, seeds, versions, "
                 "hardware, wall time) names these exact weights by their sha256.")
    return "\n".join(lines) + "\n\n"


def update_card_with_results(model_dir: str | Path, results_dir: str | Path) -> int:
    """Rewrite the card's Evaluation section from the records that evaluated these weights."""
    model_dir = Path(model_dir)
    card, weights = model_dir / "README.md", model_dir / "model.safetensors"
    if not card.is_file() or not weights.is_file():
        raise RobustHubError(f"{model_dir} needs README.md and model.safetensors to update its card")
    if not Path(results_dir).is_dir():
        raise RobustHubError(f"results directory {results_dir} does not exist; give the --out of `robust-hub eval`")
    digest = sha256_file(weights)
    records = [r.to_dict() for r in load_records(results_dir) if r.model.weights_sha256 == digest]
    if not records:
        raise RobustHubError(f"no record in {results_dir} evaluates the weights of {model_dir} (sha256 {digest[:12]}...)")
    text = card.read_text(encoding="utf-8")
    if not SECTION.search(text):
        raise RobustHubError(f"{card} has no '## Evaluation' section to fill")
    write_text_atomic(card, SECTION.sub(lambda m: m.group(1) + "\n" + evaluation_markdown(records), text, count=1))
    return len(records)
