"""Evidence in the leaderboard: the runner files it in the store with the result, and every build re-verifies it.

Here the verifier is a stand-in that reads what the store hands it, so these tests pin the store, the build, the
cache and the page text; test_leaderboard_reverify_e2e.py runs the real verify_record on a real evaluation.
"""

import hashlib
import json
import os

import pytest

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.evidence import VerifyReport
from robust_hub.leaderboard.render import build_site
from robust_hub.leaderboard.requests import request_id
from robust_hub.leaderboard.results import result_path
from robust_hub.leaderboard.reverify import EvidenceChecker, store_evidence
from robust_hub.leaderboard.runner import EvalSettings, run_queue
from robust_hub.leaderboard.store import LocalStore

from leaderboard_helpers import KEY, file_result, record


def with_evidence(rec, *payloads):
    """``rec`` with an evidence section naming one file per payload (the first is the classifier)."""
    entries = [{"path": f"evidence/{hashlib.sha256(p).hexdigest()}.safetensors",
                "sha256": hashlib.sha256(p).hexdigest(), "bytes": len(p)} for p in payloads]
    metrics = {"pgd20": {**entries[1], "examples": 3, "images": 100, "attack": "pgd20", "eps": 8 / 255}} \
        if len(entries) > 1 else {}
    return {**rec, "evidence": {"max_bytes": 1 << 20, "classifier": {**entries[0], "tensors": "head"},
                                "metrics": metrics}}


def put_evidence(store, *payloads):
    for p in payloads:
        store.create(f"evidence/{hashlib.sha256(p).hexdigest()}.safetensors", p)


class FakeVerifier:
    """Reads every evidence file through ``fetch`` (as verify_record does) and fails the models in ``bad``."""

    def __init__(self, bad=(), raises=None):
        self.bad, self.raises, self.calls, self.read = dict(bad), raises, [], {}

    def __call__(self, record, fetch, *, model_loader=None, dataset_loader=None):
        self.calls.append(record["model"]["id"])
        if self.raises is not None:
            raise self.raises
        for entry in [record["evidence"]["classifier"], *record["evidence"]["metrics"].values()]:
            self.read[entry["path"]] = fetch(entry["path"]).read_bytes()
        images = self.bad.get(record["model"]["id"])
        if images is None:
            return VerifyReport(True, [], [], {})
        return VerifyReport(False, [f"pgd20: image {i}: outside the eps-ball (9/255 > 8/255, linf)" for i in images],
                            sorted(images), {})


def test_the_runner_files_evidence_in_the_store_before_its_result(store, tmp_path, monkeypatch):
    head, examples = b"head tensors", b"adversarial examples"
    rec = with_evidence(record("org/m", "a" * 40), head, examples)
    rid = request_id("org/m", "a" * 40)
    order = []
    real_create = type(store).create

    def create(self, path, data, message=""):
        order.append(path)
        return real_create(self, path, data, message)

    monkeypatch.setattr(type(store), "create", create)
    out = tmp_path / "out"
    (out / "evidence").mkdir(parents=True)
    for p in (head, examples):
        (out / f"evidence/{hashlib.sha256(p).hexdigest()}.safetensors").write_bytes(p)
    store_evidence(store, out, rec, result_path(rec, rid))
    paths = [e["path"] for e in (rec["evidence"]["classifier"], rec["evidence"]["metrics"]["pgd20"])]
    assert order == paths and [store.read(p) for p in paths] == [head, examples]
    store_evidence(store, out, rec, result_path(rec, rid))  # again (a retried request): identical files are kept
    # a file at an evidence path that does not hold what its name says was not written by the leaderboard
    planted = with_evidence(record("org/m", "a" * 40), b"other head")
    store.create(planted["evidence"]["classifier"]["path"], b"not the head")
    (out / planted["evidence"]["classifier"]["path"]).write_bytes(b"other head")
    with pytest.raises(RobustHubError, match="already in the store and does not hold what its name says"):
        store_evidence(store, out, planted, result_path(planted, rid))
    (out / paths[1]).write_bytes(b"changed after the evaluation")
    with pytest.raises(RobustHubError, match="does not hold what its record names"):
        store_evidence(store, out, rec, result_path(rec, rid))


def test_run_queue_files_the_evidence_then_the_signed_result(tmp_path, monkeypatch):
    from robust_hub.evaluation import runner as eval_runner

    from test_leaderboard_local import tiny_model

    store = LocalStore(tmp_path / "store")
    from robust_hub.leaderboard.runner import submit_local

    request = submit_local(store, tiny_model(tmp_path / "model"), "lab/tiny")
    payloads = (b"head", b"examples")

    def fake_evaluate(model, *, revision, name, out_dir, **kwargs):
        (out_dir / "evidence").mkdir(parents=True)
        for p in payloads:
            (out_dir / f"evidence/{hashlib.sha256(p).hexdigest()}.safetensors").write_bytes(p)
        return [with_evidence(record(name, request.commit), *payloads)]

    monkeypatch.setattr(eval_runner, "evaluate", fake_evaluate)
    created = []
    real_create = LocalStore.create
    monkeypatch.setattr(LocalStore, "create", lambda self, path, data, message="": created.append(path) or
                        real_create(self, path, data, message))
    summary = run_queue(store, KEY, EvalSettings(), tmp_path / "work")
    assert summary.finished == [request.id], summary
    evidence = sorted(store.list("evidence"))
    assert evidence == sorted(f"evidence/{hashlib.sha256(p).hexdigest()}.safetensors" for p in payloads)
    (result,) = [p for p in store.list("results")]
    assert created.index(result) > max(created.index(p) for p in evidence)


def test_build_shows_re_verified_failed_and_no_evidence_rows_and_caches(tmp_path):
    store = LocalStore(tmp_path / "store")
    good = with_evidence(record("org/good", "1" * 40, aa=0.40), b"good head", b"good examples")
    bad = with_evidence(record("org/bad", "2" * 40, aa=0.45), b"bad head", b"bad examples")
    old = record("org/old", "3" * 40, pgd=0.32, aa=0.30)
    for rec in (good, bad, old):
        file_result(store, rec)
    put_evidence(store, b"good head", b"good examples", b"bad head", b"bad examples")
    verifier = FakeVerifier(bad={"org/bad": [17, 3]})
    check = EvidenceChecker(store, {}, verifier=verifier, cache_dir=tmp_path / "cache")
    board = build_site(store, KEY, tmp_path / "site", endpoint="https://huggingface.co", check_evidence=check)

    rows = {row.model_id: row for row in board.tables[0].rows}
    assert rows["org/good"].evidence.text().startswith("re-verified 20") and rows["org/good"].rank == 1
    assert rows["org/bad"].evidence.text() == "evidence failed: images 3, 17"
    assert rows["org/bad"].rank is None and rows["org/bad"].unranked_because == ["evidence failed"]
    assert rows["org/old"].evidence.text() == "no evidence" and rows["org/old"].rank == 2
    assert sorted(verifier.calls) == ["org/bad", "org/good"]  # a result without evidence is not verified
    assert verifier.read[good["evidence"]["metrics"]["pgd20"]["path"]] == b"good examples"  # fetched from the store
    markdown = (tmp_path / "site" / "leaderboard.md").read_text()
    assert "| evidence failed: images 3, 17 |" in markdown and "| no evidence |" in markdown
    assert f"| {rows['org/good'].evidence.text()} |" in markdown

    # rebuilt: the verdicts come from the cache, keyed by the record (which names its evidence by sha256)
    build_site(store, KEY, tmp_path / "site", endpoint="https://huggingface.co", check_evidence=check)
    assert sorted(verifier.calls) == ["org/bad", "org/good"]
    again = build_board_rows(store, tmp_path, FakeVerifier())
    assert again["org/bad"].evidence.text() == "evidence failed: images 3, 17"  # a cached failure stays failed
    # a result naming other evidence (same model, other bytes) is another cache entry
    file_result(store, with_evidence(record("org/good", "1" * 40, protocol="alf"), b"good head", b"other"))
    put_evidence(store, b"other")
    fresh = FakeVerifier()
    build_board_rows(store, tmp_path, fresh)
    assert fresh.calls == ["org/good"]


def build_board_rows(store, tmp_path, verifier):
    """The rows of a board built with ``verifier`` and the cache under ``tmp_path``, by model (SLF tables)."""
    from robust_hub.leaderboard.render import build_board

    check = EvidenceChecker(store, {}, verifier=verifier, cache_dir=tmp_path / "cache")
    board = build_board(store, KEY, "https://huggingface.co", check)
    return {row.model_id: row for table in board.tables if table.title.startswith("SLF") for row in table.rows}


@pytest.mark.parametrize("error", [RobustHubError("the test set has fingerprint x, not the record's y"),
                                   ValueError("a bug")])
def test_a_verification_that_cannot_run_never_stops_the_build_and_is_not_cached(tmp_path, error):
    store = LocalStore(tmp_path / "store")
    file_result(store, with_evidence(record("org/a", "1" * 40), b"head"))
    file_result(store, record("org/b", "2" * 40))
    rows = build_board_rows(store, tmp_path, FakeVerifier(raises=error))
    assert rows["org/a"].evidence.state == "unchecked" and rows["org/a"].rank == 1
    prefix = "" if isinstance(error, RobustHubError) else "ValueError: "
    assert rows["org/a"].evidence.text() == f"not re-verified: {prefix}{error}"
    assert rows["org/b"].evidence.text() == "no evidence"
    assert not list((tmp_path / "cache").glob("*.json"))
    retried = FakeVerifier()
    build_board_rows(store, tmp_path, retried)
    assert retried.calls == ["org/a"]


def test_evidence_is_fetched_from_the_store_without_following_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.safetensors").write_bytes(b"head")
    store = LocalStore(tmp_path / "store")
    rec = with_evidence(record("org/a", "1" * 40), b"head")
    file_result(store, rec)
    path = rec["evidence"]["classifier"]["path"]
    (store.root / "evidence").mkdir()
    os.symlink(outside / "x.safetensors", store.root / path)
    with pytest.raises(RobustHubError, match="goes through a link"):
        store.local_path(path)
    rows = build_board_rows(store, tmp_path, FakeVerifier())
    assert rows["org/a"].evidence.state == "unchecked" and "links are not followed" in rows["org/a"].evidence.text()
    (store.root / path).unlink()
    with pytest.raises(RobustHubError, match="not in the store"):
        store.local_path(path)
    (store.root / "evidence").rmdir()
    os.symlink(outside, store.root / "evidence")  # a linked folder on the way is refused too
    with pytest.raises(RobustHubError, match="goes through a link"):
        store.local_path(path)


def test_the_leaderboard_build_command_warns_about_failed_evidence(tmp_path, capsys, monkeypatch):
    from robust_hub.cli import main
    from robust_hub.leaderboard import render

    store = LocalStore(tmp_path / "store")
    file_result(store, with_evidence(record("org/bad", "2" * 40), b"head", b"examples"))
    put_evidence(store, b"head", b"examples")
    monkeypatch.setenv("ROBUST_HUB_LEADERBOARD_KEY", KEY.decode())
    monkeypatch.setenv("ROBUST_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(render, "EvidenceChecker", lambda store, requests: EvidenceChecker(
        store, requests, verifier=FakeVerifier(bad={"org/bad": [5]}), cache_dir=tmp_path / "cache"))
    assert main(["leaderboard", "build", "--store", str(store.root), "--site", str(tmp_path / "site")]) == 0
    out = capsys.readouterr().out
    assert "warning: org/bad (2222222): evidence failed: image 5" in out and "0 with evidence re-verified" in out
    assert json.loads(next((tmp_path / "cache").glob("*.json")).read_text())["images"] == [5]


def test_build_fetches_evidence_from_either_store_as_plain_files(store, tmp_path):
    rec = with_evidence(record("org/a", "1" * 40), b"head bytes", b"example bytes")
    file_result(store, rec)
    put_evidence(store, b"head bytes", b"example bytes")
    seen = {}

    def verifier(record, fetch, **loaders):
        for entry in [record["evidence"]["classifier"], *record["evidence"]["metrics"].values()]:
            local = fetch(entry["path"])
            seen[entry["path"]] = (local.is_symlink(), local.read_bytes())
        return VerifyReport(True, [], [], {})

    rows = build_board_rows(store, tmp_path, verifier)
    assert rows["org/a"].evidence.state == "verified"
    assert seen == {rec["evidence"]["classifier"]["path"]: (False, b"head bytes"),
                    rec["evidence"]["metrics"]["pgd20"]["path"]: (False, b"example bytes")}


def test_a_request_without_a_local_directory_hashes_nothing(tmp_path, monkeypatch):
    """Not the working directory: a local revision whose request names no directory has no content to key by."""
    from types import SimpleNamespace

    import robust_hub.evaluation.loading as loading

    hashed = []
    monkeypatch.setattr(loading, "sha256_directory", lambda path: hashed.append(path) or "h")
    result = SimpleNamespace(request_id="r1", record={"model": {"revision": "local-sha256:" + "0" * 64}})
    check = EvidenceChecker(LocalStore(tmp_path / "store"), {"r1": SimpleNamespace(event={})},
                            cache_dir=tmp_path / "cache")
    assert check._local_content(result) == "" and hashed == []
    check.requests["r1"] = SimpleNamespace(event={"local_dir": str(tmp_path / "model")})
    assert check._local_content(result) == "h" and hashed == [tmp_path / "model"]


def test_a_file_where_a_store_folder_should_be_is_not_in_the_store(tmp_path):
    store = LocalStore(tmp_path / "store")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "evidence").write_text("not a folder")
    with pytest.raises(RobustHubError, match="evidence/a.safetensors is not in the store"):
        store.local_path("evidence/a.safetensors")
