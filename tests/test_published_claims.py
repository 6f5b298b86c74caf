"""Only earned numbers leave the suite: what push, the card and the leaderboard publish, and with what label.

Each test drives the public entry points (``robust-hub push``, ``robust-hub eval``, the training run, the
leaderboard build) against the Hub stand-in and reads back what a visitor of the Hub would see.
"""

import json
import os

import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard

import robust_hub
from robust_hub.cli import main
from robust_hub.config import load_config
from robust_hub.data import load_image_dataset
from robust_hub.evaluation.loading import sha256_file
from robust_hub.evaluation.measured_on import measured_on
from robust_hub.evaluation.runner import evaluate
from robust_hub.hub_push import push_to_hub
from robust_hub.leaderboard.render import build_site, cell
from robust_hub.leaderboard.requests import request_id
from robust_hub.leaderboard.results import KEY_ENV, sign
from robust_hub.leaderboard.store import LocalStore
from robust_hub.model_card import CardInputs, render
from robust_hub.training.loop import pretrain

from leaderboard_helpers import KEY, file_result, push_tiny, record

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digits(n_train=48, n_test=16):
    return (load_image_dataset("embedded:digits", "train").subset(range(n_train)),
            load_image_dataset("embedded:digits", "test").subset(range(n_test)))


def _commits(repo_id):
    return [c.commit_id for c in HfApi().list_repo_commits(repo_id)]


# ------------------------------------------------------------------------------------------- forged results
def test_push_refuses_store_results_the_leaderboard_would_not_accept(hub, tmp_path, monkeypatch, capsys):
    """A forged (unsigned or wrongly signed) result claiming 91% AutoAttack never reaches the card, the
    model-index or .eval_results/; the signed one does, and each refused file is named with its reason."""
    model_dir, commit = push_tiny(tmp_path, "org/claimed")
    store = LocalStore(tmp_path / "store")
    rid = request_id("org/claimed", commit)
    genuine = record("org/claimed", commit, clean=0.6, pgd=0.31, aa=0.27)
    file_result(store, genuine)
    forged = record("org/claimed", commit, clean=0.95, pgd=0.93, aa=0.91)
    body = {"record": forged, "request_id": rid, "signed_by": "robust-hub leaderboard", "signature": "0" * 64}
    assert store.create(f"results/{rid}/unsigned.json", json.dumps(body).encode())
    assert store.create(f"results/{rid}/other_key.json", sign(forged, rid, b"x" * 64))
    monkeypatch.setenv(KEY_ENV, KEY.decode())

    assert main(["push", str(model_dir), "org/claimed", "--results", str(tmp_path / "store")]) == 0
    err = capsys.readouterr().err
    for name in ("unsigned.json", "other_key.json"):
        assert f"warning: not published: {tmp_path / 'store'}/results/{rid}/{name}: signature mismatch" in err

    files = hub.files_at("org/claimed")
    index = ModelCard.load("org/claimed").data.to_dict()["model-index"][0]["results"]
    aa = [m["value"] for r in index for m in r["metrics"] if m["name"].startswith("AutoAttack")]
    assert aa == [27.0]
    published = [json.loads(v)["record"]["metrics"]["autoattack_acc"] for k, v in files.items()
                 if k.startswith("eval_records/")]
    assert published == [0.27]
    values = [e["value"] for k, v in files.items() if k.startswith(".eval_results/") for e in yaml.safe_load(v)]
    assert 0.91 not in values and 0.27 in values
    assert "91.00" not in files["README.md"].decode() and "27.00" in files["README.md"].decode()


def test_push_with_a_store_and_no_key_is_refused_before_anything_is_uploaded(hub, tmp_path, monkeypatch, capsys):
    model_dir, commit = push_tiny(tmp_path, "org/nokey")
    file_result(LocalStore(tmp_path / "store"), record("org/nokey", commit))
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    before = _commits("org/nokey")
    assert main(["push", str(model_dir), "org/nokey", "--results", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no leaderboard key")
    assert _commits("org/nokey") == before


def test_push_publishes_only_the_records_of_these_weights_from_a_shared_eval_dir(hub, tmp_path):
    """Two models evaluated into one --out directory: pushing one publishes its record, not the other's."""
    kw = dict(protocols="slf", dataset=_digits(), out_dir=tmp_path / "evals", metrics="clean",
              protocol_overrides={"epochs": 1}, progress=False, print_table=False, device="cpu")
    for seed, name in ((0, "mine"), (1, "other")):
        torch.manual_seed(seed)
        robust_hub.create_backbone("robust_resnet_tiny").save_pretrained(tmp_path / name)
        evaluate(str(tmp_path / name), **kw)
    assert len(list((tmp_path / "evals").glob("*.json"))) == 2
    push_to_hub(str(tmp_path / "mine"), "org/mine", results=[str(tmp_path / "evals")])

    files = hub.files_at("org/mine")
    mine, other = sha256_file(tmp_path / "mine" / "model.safetensors"), sha256_file(tmp_path / "other" / "model.safetensors")
    shas = [json.loads(v)["record"]["model"]["weights_sha256"] for k, v in files.items() if k.startswith("eval_records/")]
    assert shas == [mine]
    assert len([k for k in files if k.startswith(".eval_results/")]) == 1
    assert mine[:16] in files["README.md"].decode() and other[:16] not in files["README.md"].decode()


# ------------------------------------------------------------------------------------------- subsets
def test_subset_numbers_carry_their_size_wherever_they_are_published(hub, tmp_path, monkeypatch):
    """eval on 12 of 16 test images, AutoAttack on 4, 1 finetuning epoch: the card's table, the model-index,
    .eval_results/ and the leaderboard (page and Markdown) all say so, and none names it the benchmark's."""
    model_dir, _ = push_tiny(tmp_path, "org/subset")
    (rec,) = evaluate(str(model_dir), protocols="slf", dataset=_digits(), out_dir=tmp_path / "r", n_test=12,
                      n_autoattack=4, metrics="clean,pgd20,autoattack", protocol_overrides={"epochs": 1},
                      progress=False, print_table=False, device="cpu")
    label = "12 of 16 test images, AutoAttack on the first 4, epochs 1 (benchmark 25)"
    tag = "subset-test12-aa4-epochs1"
    push_to_hub(str(model_dir), "org/subset", results=[str(tmp_path / "r")])
    files = hub.files_at("org/subset")

    card = ModelCard.load("org/subset")
    index = card.data.to_dict()["model-index"][0]["results"]
    assert len(index) == 1
    (result,) = index
    assert label in result["dataset"]["name"] and result["dataset"]["split"] == "test[:12]"
    assert result["dataset"]["config"] == tag and result["dataset"]["args"] == {"n_test": 12, "n_train": 48,
                                                                               "n_autoattack": 4}
    assert "not the benchmark" in result["task"]["name"]
    assert len(result["metrics"]) == 3 and all(m["name"].endswith(f"[{tag}]") for m in result["metrics"])

    (yaml_name,) = [k for k in files if k.startswith(".eval_results/")]
    entries = yaml.safe_load(files[yaml_name])
    assert {e["dataset"]["task_id"] for e in entries} == {f"slf-{m}-linf-8-255-{tag}" for m in ("clean", "pgd20",
                                                                                                 "autoattack")}
    assert all(e["notes"].startswith("SUBSET") and label in e["notes"] for e in entries)
    assert f"| {label}; not the benchmark's protocol |" in card.text

    # the same record, computed by the leaderboard for the request of this commit
    commit = HfApi().model_info("org/subset").sha
    board_rec = {**rec, "model": {**rec["model"], "id": "org/subset", "revision": commit}}
    store = LocalStore(tmp_path / "store")
    file_result(store, board_rec)
    build_site(store, KEY, tmp_path / "site", endpoint=hub.url)
    markdown = (tmp_path / "site" / "leaderboard.md").read_text()
    html = (tmp_path / "site" / "index.html").read_text()
    assert cell(f"measured on {label}") in markdown and "not the benchmark's numbers" in markdown
    assert f"measured on {label}" in html


def test_the_benchmark_label_needs_the_whole_split_and_the_default_protocol():
    full = record("org/a", "1" * 40)
    full["protocol"]["settings"] = {"epochs": 25, "eval": {"full_sizes": {"train": 100, "test": 100},
                                                           "n_autoattack": None}}
    assert measured_on(full).benchmark and measured_on(full).text() == "100 test images"
    assert measured_on(full).tag() == ""
    unknown = {**full, "protocol": {"name": "slf", "settings": {"epochs": 25, "eval": {}}}}
    assert not measured_on(unknown).benchmark and "100 of ? test images" in measured_on(unknown).text()
    fewer_train = {**full, "dataset": {**full["dataset"], "n_train": 60}}
    assert measured_on(fewer_train).text() == ("100 test images, finetuned on 60 of 100 training images; "
                                               "not the benchmark's protocol")


# ------------------------------------------------------------------------------------------- links
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_push_refuses_a_symbolic_link_and_uploads_nothing(hub, tmp_path, capsys, kind):
    model_dir, _ = push_tiny(tmp_path, "org/linked")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "secret.txt").write_text("password")
    link = model_dir / ("notes.txt" if kind == "file" else "extra")
    link.symlink_to(secret / "secret.txt" if kind == "file" else secret)
    before = _commits("org/linked")
    assert main(["push", str(model_dir), "org/linked"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == (f"error: {link} is a symbolic link; push uploads only the regular files "
                                        f"inside {model_dir}: replace the link by the file or remove it")
    assert _commits("org/linked") == before
    assert not any(b"password" in data for data in hub.files_at("org/linked").values())


# ------------------------------------------------------------------------------------------- training card
def test_a_shortened_training_run_card_says_what_the_run_did_and_no_local_path(tmp_path):
    out = tmp_path / "run"
    config = load_config(os.path.join(REPO, "configs", "offline.yaml"),
                         ["data.image_size=16", "train.batch_size=32", "attack.steps=1", "train.max_steps_per_epoch=2",
                          "train.epochs=2", "train.warmup_epochs=1", "train.checkpoint_every=0", f"train.output_dir={out}"])
    pretrain(config)
    card = (out / "model" / "README.md").read_text()
    train_images = json.loads((out / "environment.json").read_text())["data"]["train_images"]
    # 2 epochs x 2 steps (the cap) x 32 images, whatever the training set holds
    assert train_images > 128
    assert (f"4 optimiser steps of 32 images over 2 epoch(s) = 128 images seen, from a training set of {train_images} "
            "(train.max_steps_per_epoch=2 cut each epoch short)") in card
    assert f"{train_images} training images, 2 epochs" not in card
    assert str(tmp_path) not in card and "| `train.output_dir` | `run (local)` |" in card
    config_json = json.loads((out / "model" / "config.json").read_text())
    run = config_json["robust_hub"]["training"]["run"]
    assert (run["steps"], run["images_seen"], run["epochs"]) == (4, 128, 2)
    # a local copy of the data (as ../shared/data/cifar10 would be) is named by its folder, on every card
    config_json["robust_hub"]["training"]["config"]["data"]["source"] = str(tmp_path / "data" / "cifar10")
    card = render(CardInputs(config_json))
    assert str(tmp_path) not in card and "`cifar10 (local)`" in card
