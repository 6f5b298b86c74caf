"""Evaluation results reach the model card only for the weights they evaluated."""

import pytest
import torch

import robust_hub
from robust_hub import RobustHubError
from robust_hub.cli import main
from robust_hub.evaluation.runner import evaluate
from robust_hub.data import load_image_dataset


@pytest.fixture
def evaluated(tmp_path):
    model = robust_hub.create_backbone("robust_resnet_tiny").eval()
    model.save_pretrained(tmp_path / "model", model_card="# tiny\n\n## Evaluation\n\nNot evaluated yet.\n\n## Library versions\n\ntorch\n")
    data = load_image_dataset("embedded:digits", "train").subset(range(64)), load_image_dataset("embedded:digits", "test").subset(range(32))
    evaluate(str(tmp_path / "model"), protocols="slf", dataset=data, out_dir=tmp_path / "results", metrics="clean,pgd20",
             protocol_overrides={"epochs": 1}, progress=False, print_table=False, device="cpu")
    return tmp_path


def test_card_shows_the_records_of_these_weights(evaluated):
    assert main(["card", str(evaluated / "model"), "--results", str(evaluated / "results")]) == 0
    card = (evaluated / "model" / "README.md").read_text()
    assert "| SLF (epochs 1) |" in card and "Not evaluated yet" not in card
    assert card.index("## Evaluation") < card.index("| SLF") < card.index("## Library versions")


def test_records_of_other_weights_are_not_shown(evaluated):
    other = robust_hub.create_backbone("robust_resnet_tiny")
    with torch.no_grad():
        other.conv1.weight.add_(1.0)
    other.save_pretrained(evaluated / "other", model_card="# other\n\n## Evaluation\n\nNone.\n")
    with pytest.raises(RobustHubError, match="no record"):
        from robust_hub.evaluation.card import update_card_with_results

        update_card_with_results(evaluated / "other", evaluated / "results")
    assert "None." in (evaluated / "other" / "README.md").read_text()
