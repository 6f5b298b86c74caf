"""data.subset: every part of a run (training, the validation split, RCS, the records and the card) sees only
the first N images of the split."""

import json
from pathlib import Path

import yaml

from robust_hub.cli import main
from robust_hub.data import load_image_dataset

OFFLINE = str(Path(__file__).resolve().parents[1] / "configs" / "offline.yaml")


def test_a_run_on_a_subset_says_so_everywhere(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "--config", OFFLINE, "data.subset=200", "train.batch_size=16", "train.epochs=2",
            "train.max_steps_per_epoch=2", "attack.steps=1", "coreset.mode=rcs", "coreset.warmup_epochs=1",
            "coreset.interval=1", "coreset.fraction=0.5", f"train.output_dir={out}"]
    assert main(args) == 0
    first = load_image_dataset("embedded:digits", "train", image_size=32).subset(range(200))
    train, val = first.split_validation(0.05, seed=1)
    data = json.loads((out / "environment.json").read_text())["data"]
    assert data["subset"] == 200 and (data["train_images"], data["val_images"]) == (len(train), len(val)) == (190, 10)
    assert data["fingerprint"] == train.fingerprint  # the run trained on exactly the first 200 minus validation
    training = json.loads((out / "model" / "config.json").read_text())["robust_hub"]["training"]
    assert training["data"]["subset"] == 200 and training["data"]["images"] == 190
    (selection,) = training["coreset_selections"]
    assert selection["size"] == 16  # half of the 2 minibatches a capped epoch trains on
    card = (out / "model" / "README.md").read_text()
    assert "first 200 images only (data.subset)" in card
    # the run config and the card say which selection ran: the reference's, by default
    coreset = yaml.safe_load((out / "run_config.yaml").read_text())["coreset"]
    assert (coreset["eta"], coreset["gain_vector"], coreset["selection_loss"]) == (0.02, "row_mean", "acl")
    assert "the reference's selection (row-mean gains, plain ACL loss)" in card


def test_a_subset_larger_than_the_split_is_one_error_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--config", OFFLINE, "data.subset=100000", f"train.output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "data.subset=100000" in err and not out.exists()
