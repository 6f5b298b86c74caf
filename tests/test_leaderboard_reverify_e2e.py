"""The leaderboard's evidence end to end: a real evaluation of a tiny model files its adversarial examples in the
store, and `leaderboard build` re-verifies them with the real verify_record (then fails them when the weights
under the submitted directory change)."""

import json
import shutil

import pytest

from robust_hub.leaderboard.render import build_site
from robust_hub.leaderboard.runner import EvalSettings, run_queue, submit_local
from robust_hub.leaderboard.store import LocalStore

from leaderboard_helpers import KEY
from test_leaderboard_local import tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_real_result_is_re_verified_and_fails_once_its_weights_change(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUST_HUB_CACHE", str(tmp_path / "cache"))
    model_dir = tiny_model(tmp_path / "model", seed=0)
    store = LocalStore(tmp_path / "store")
    request = submit_local(store, model_dir, "lab/tiny")
    settings = EvalSettings(protocols="slf", dataset="embedded:digits", metrics="clean,pgd20",
                            options={"n_train": 48, "n_test": 32, "protocol_overrides": {"epochs": 1},
                                     "device": "cpu"})
    assert run_queue(store, KEY, settings, tmp_path / "work").finished == [request.id]
    (result,) = store.list("results")
    record = json.loads(store.read(result))["record"]
    pgd = record["evidence"]["metrics"]["pgd20"]
    assert store.list("evidence") == sorted([pgd["path"], record["evidence"]["classifier"]["path"]])
    assert pgd["examples"] > 0, "the tiny model kept every image: nothing for the evidence to prove"

    board = build_site(store, KEY, tmp_path / "site", endpoint="https://huggingface.co")  # as `leaderboard build`
    (row,) = board.tables[0].rows
    assert row.evidence.state == "verified", row.evidence
    assert "re-verified" in (tmp_path / "site" / "leaderboard.md").read_text()
    assert len(list((tmp_path / "cache" / "leaderboard-verified").glob("*.json"))) == 1

    # the weights under the submitted directory change after the run: verifying again fails, naming why (the
    # cached verdict names the directory's content, so the same cache does not keep saying "re-verified")
    shutil.rmtree(model_dir)
    tiny_model(model_dir, seed=1)
    board = build_site(store, KEY, tmp_path / "site", endpoint="https://huggingface.co")
    (row,) = board.tables[0].rows
    assert row.evidence.state == "failed" and row.rank is None
    assert any(p.startswith("weights: sha256") for p in row.evidence.problems), row.evidence.problems
    assert "evidence failed" in (tmp_path / "site" / "index.html").read_text()
    assert len(list((tmp_path / "cache" / "leaderboard-verified").glob("*.json"))) == 2
