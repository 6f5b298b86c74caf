"""A private leaderboard without the Hub: model directories submitted to a local store, pinned to their content."""

import json
import os
import socket

import pytest
import torch

import robust_hub
from robust_hub.cli import main
from robust_hub.evaluation.loading import sha256_directory
from robust_hub.leaderboard.render import build_site
from robust_hub.leaderboard.requests import RequestQueue
from robust_hub.leaderboard.runner import run_queue
from robust_hub.leaderboard.store import LocalStore

from helpers import with_distinct_bn_statistics
from leaderboard_helpers import KEY, fast_settings, history

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def offline(monkeypatch):
    """No Hub at all: any attempt to open a socket to one fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real = socket.socket.connect

    def refuse(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network used: {address}")
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", refuse)


def tiny_model(path, seed=0):
    torch.manual_seed(seed)
    model = with_distinct_bn_statistics(robust_hub.create_backbone("robust_resnet_tiny"), seed)
    model.save_pretrained(path)
    return path


def test_a_model_directory_is_submitted_pinned_to_its_content_run_and_shown_by_its_name(tmp_path, capsys, offline):
    model_dir = tiny_model(tmp_path / "outputs" / "model")
    store = LocalStore(tmp_path / "store")
    assert main(["submit", str(model_dir), "--name", "lab/tiny-acl", "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    digest = sha256_directory(model_dir)
    assert "pinned to the content of its files" in out and "lab/tiny-acl" in out
    (request,), _ = RequestQueue(store).all()
    assert request.commit == f"local-sha256:{digest}" and request.event["local_dir"] == str(model_dir.resolve())
    assert request.id == f"lab--tiny-acl--local-sha256-{digest}"

    summary = run_queue(store, KEY, fast_settings(), tmp_path / "work")
    assert summary.finished == [request.id], summary
    (path,) = store.list("results")
    rec = json.loads(store.read(path))["record"]
    assert rec["model"]["id"] == "lab/tiny-acl" and rec["model"]["revision"] == request.commit

    board = build_site(store, KEY, tmp_path / "site", endpoint="https://huggingface.co")
    (row,) = board.tables[0].rows
    assert row.model_id == "lab/tiny-acl" and row.rank == 1
    html, md = (tmp_path / "site" / "index.html").read_text(), (tmp_path / "site" / "leaderboard.md").read_text()
    assert 'data-model="lab/tiny-acl"' in html and "| lab/tiny-acl (local) |" in md
    # a local model has no Hub page: no link to one, and its pin is shown as the content hash it is
    assert "https://huggingface.co/lab/tiny-acl" not in html + md
    assert f"sha256 {digest[:7]}" in html and f"sha256 {digest[:7]}" in md


def test_a_directory_changed_after_submission_fails_with_the_reason(tmp_path, offline):
    model_dir = tiny_model(tmp_path / "m")
    store = LocalStore(tmp_path / "store")
    assert main(["submit", str(model_dir), "--name", "lab/m", "--store", str(store.root)]) == 0
    (model_dir / "notes.txt").write_text("edited afterwards")
    summary = run_queue(store, KEY, fast_settings(), tmp_path / "work")
    (reason,) = summary.failed.values()
    assert "changed since it was submitted" in reason and store.list("results") == []


@pytest.mark.parametrize("plant, why", [
    (lambda d: (d / "model.safetensors").unlink(), "no safetensors weights"),
    (lambda d: (d / "config.json").unlink(), "no config.json"),
    (lambda d: (d / "modeling.py").write_text("import os"), "needs remote code"),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                          "auto_map": {"AutoModel": "x.Y"}})), "needs remote code"),
    (lambda d: os.symlink("/etc/hostname", d / "extra.txt"), "holds a link"),
    (lambda d: None, "--name ORG/NAME"),
])
def test_bad_model_directories_are_refused_in_one_line_and_nothing_is_filed(tmp_path, capsys, offline, plant, why):
    model_dir = tiny_model(tmp_path / "m")
    plant(model_dir)
    argv = ["submit", str(model_dir), "--store", str(tmp_path / "store")]
    if why != "--name ORG/NAME":
        argv += ["--name", "lab/m"]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and why in err, err
    assert LocalStore(tmp_path / "store").list("requests") == []


def test_a_local_request_in_a_hub_store_is_refused_by_the_runner(hub, tmp_path):
    """Anyone can file a request in a shared store: the runner never reads a path one names."""
    from robust_hub.leaderboard.store import HubStore

    model_dir = tiny_model(tmp_path / "m")
    store = HubStore("board/store")
    digest = sha256_directory(model_dir)
    RequestQueue(store).submit("lab/m", f"local-sha256:{digest}", "local directory", local_dir=str(model_dir))
    summary = run_queue(store, KEY, fast_settings(), tmp_path / "work")
    (reason,) = summary.failed.values()
    assert "not local" in reason and store.list("results") == []
    assert main(["submit", str(model_dir), "--name", "lab/m", "--store", "hf://datasets/board/store"]) != 0


def test_run_help_shows_every_default(capsys):
    from robust_hub.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["leaderboard", "run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    run = build_parser()._subparsers._group_actions[0].choices["leaderboard"]._subparsers._group_actions[0] \
        .choices["run"]
    for action in run._actions:
        if action.option_strings and action.dest not in ("help", "site"):
            assert "default" in " ".join(action.help.split()), action.dest
    assert "(default slf,alf,aff)" in text and "(default ./leaderboard_work)" in text and "(default 8/255)" in text
    assert "--n-test N_TEST evaluate on the first N test images (default: all)" in text


def test_run_says_what_it_will_do_and_where_once_before_working(tmp_path, capsys, monkeypatch):
    import robust_hub.leaderboard.runner as runner

    monkeypatch.delenv("ROBUST_HUB_LEADERBOARD_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    seen = []

    def run_queue(store, key, settings, work_dir, **kw):
        seen.append((capsys.readouterr().out, settings, work_dir))
        return runner.RunSummary()

    monkeypatch.setattr(runner, "run_queue", run_queue)
    argv = ["leaderboard", "run", "--store", "store", "--site", "site", "--n-test", "64", "--protocols", "slf"]
    assert main(argv) == 0
    (said, settings, work_dir), = seen
    key_file = tmp_path / "config" / "robust-hub" / "leaderboard.key"
    assert said.count("leaderboard run:") == 1 and "protocols slf (each protocol's own epochs (25))" in said
    assert "metrics clean,pgd20,autoattack at eps 8/255 on cifar10" in said
    assert "finetuning on all training images; testing on the first 64 test images; AutoAttack on all of those" in said
    assert f"work directory {tmp_path / 'leaderboard_work'};" in said and work_dir == "leaderboard_work"
    assert f"signing key {key_file} (created now" in said and key_file.is_file()
    assert settings.protocols == "slf" and settings.options["n_test"] == 64
    assert main(argv) == 0  # the key exists now, and is said to be used as it is
    assert f"signing key {key_file}\n" in seen[1][0] and "created" not in seen[1][0]
