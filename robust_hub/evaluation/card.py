"""``robust-hub card``: rewrite a saved model's card with the evaluation records of its weights.

The card is the one card (:mod:`robust_hub.model_card`), rendered from the directory's ``config.json`` and the
records in the results directory whose ``weights_sha256`` is the sha256 of this ``model.safetensors``; records of
other weights in the same directory are never shown. A README.md robust-hub did not write is left alone.
"""

from __future__ import annotations

from pathlib import Path

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.loading import sha256_file
from robust_hub.evaluation.records import load_records
from robust_hub.io import write_text_atomic


def update_card_with_results(model_dir: str | Path, results_dir: str | Path) -> int:
    """Render the card of ``model_dir`` with the records that evaluated its weights; return how many."""
    from robust_hub.model_card import MARKER, CardInputs, Published, plots_beside, render
    from robust_hub.models.hub import read_config

    model_dir = Path(model_dir)
    card, weights = model_dir / "README.md", model_dir / "model.safetensors"
    if not (model_dir / "config.json").is_file() or not weights.is_file():
        raise RobustHubError(f"{model_dir} needs config.json and model.safetensors (a saved model) to write its card")
    if not Path(results_dir).is_dir():
        raise RobustHubError(f"results directory {results_dir} does not exist; give the --out of `robust-hub eval`")
    if card.is_symlink() or (card.exists() and MARKER not in card.read_text(encoding="utf-8", errors="replace")):
        raise RobustHubError(f"{card} was not written by robust-hub; move it away and run `robust-hub card` again")
    digest = sha256_file(weights)
    records = [r.to_dict() for r in load_records(results_dir) if r.model.weights_sha256 == digest]
    if not records:
        raise RobustHubError(f"no record in {results_dir} evaluates the weights of {model_dir} (sha256 {digest[:12]}...)")
    results = [Published(r, "robust-hub eval") for r in records]
    write_text_atomic(card, render(CardInputs(read_config(model_dir), digest, results,
                                              training_plots=plots_beside(model_dir))))
    return len(records)
