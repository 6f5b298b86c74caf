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
    model.save_pretrained(tmp_path / "model")
    data = load_image_dataset("embedded:digits", "train").subset(range(64)), load_image_dataset("embedded:digits", "test").subset(range(32))
    evaluate(str(tmp_path / "model"), protocols="slf", dataset=data, out_dir=tmp_path / "results", metrics="clean,pgd20",
             protocol_overrides={"epochs": 1}, progress=False, print_table=False, device="cpu")
    return tmp_path


def test_card_shows_the_records_of_these_weights(evaluated):
    assert main(["card", str(evaluated / "model"), "--results", str(evaluated / "results")]) == 0
    card = (evaluated / "model" / "README.md").read_text()
    assert "| SLF (epochs 1) |" in card and "Not evaluated yet" not in card
    assert card.index("## Evaluation") < card.index("| SLF") < card.index("## Library versions")
    # what the numbers were measured on: the 32 test images given, 1 finetuning epoch instead of the benchmark's 25
    assert "| 32 test images, epochs 1 (benchmark 25); not the benchmark's protocol |" in card
    # the card is robust-hub's now, so a second run may rewrite it
    assert main(["card", str(evaluated / "model"), "--results", str(evaluated / "results")]) == 0


def test_a_readme_robust_hub_did_not_write_is_left_alone(evaluated, capsys):
    mine = "# my notes\n\n## Evaluation\n\nmine\n"
    (evaluated / "model" / "README.md").write_text(mine)
    assert main(["card", str(evaluated / "model"), "--results", str(evaluated / "results")]) == 2
    assert "was not written by robust-hub" in capsys.readouterr().err
    assert (evaluated / "model" / "README.md").read_text() == mine


def test_records_of_other_weights_are_not_shown(evaluated):
    other = robust_hub.create_backbone("robust_resnet_tiny")
    with torch.no_grad():
        other.conv1.weight.add_(1.0)
    other.save_pretrained(evaluated / "other")
    with pytest.raises(RobustHubError, match="no record"):
        from robust_hub.evaluation.card import update_card_with_results

        update_card_with_results(evaluated / "other", evaluated / "results")
    assert not (evaluated / "other" / "README.md").exists()
