"""The leaderboard end to end against the Hub stand-in, with the real huggingface_hub client."""

import json
import threading

import pytest
import timm
import torch
import yaml
from huggingface_hub import HfApi, ModelCard
from transformers import AutoModel

import robust_hub
from robust_hub import RobustHubError
from robust_hub.cli import main
from robust_hub.hub_push import push_to_hub
from robust_hub.leaderboard.render import build_board, build_site
from robust_hub.leaderboard.requests import RequestQueue, request_id
from robust_hub.leaderboard.runner import run_queue, submit
from robust_hub.leaderboard.store import HubStore, LocalStore, open_store
from robust_hub.leaderboard.trust import verdict

from leaderboard_helpers import KEY, fast_settings, file_result, history, push_tiny, record

SHA = "a" * 40


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_store_create_is_exclusive_and_readable(store):
    assert store.create("requests/x/0000-PENDING.json", b"first")
    assert not store.create("requests/x/0000-PENDING.json", b"second")
    assert store.read("requests/x/0000-PENDING.json") == b"first"
    assert store.list("requests") == ["requests/x/0000-PENDING.json"] and store.list("results") == []
    for bad in ("../escape.json", "/abs.json", "a/../b.json", "a//b"):
        with pytest.raises(RobustHubError, match="invalid store path"):
            store.create(bad, b"x")


def test_concurrent_writers_land_exactly_once(store):
    """16 threads race for 4 paths: 4 winners, 12 told no, and every file holds one writer's bytes whole."""
    wins = []

    def write(i):
        if store.create(f"requests/r{i % 4}/0000-PENDING.json", json.dumps({"writer": i}).encode()):
            wins.append(i)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(w % 4 for w in wins) == [0, 1, 2, 3]
    for i in wins:
        assert json.loads(store.read(f"requests/r{i % 4}/0000-PENDING.json")) == {"writer": i}
    assert len(store.list("requests")) == 4


def test_concurrent_submissions_are_filed_once_and_duplicates_refused(hub, tmp_path):
    commits = {f"org/m{i}": push_tiny(tmp_path, f"org/m{i}", seed=i)[1] for i in range(3)}
    store = HubStore("board/requests")
    outcomes = []

    def go(model_id):
        try:
            outcomes.append(("ok", submit(store, model_id).id))
        except RobustHubError as error:
            outcomes.append(("error", str(error)))

    threads = [threading.Thread(target=go, args=(f"org/m{i % 3}",)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(rid for kind, rid in outcomes if kind == "ok") == sorted(request_id(m, c) for m, c in commits.items())
    assert sum(kind == "error" and "duplicate submission" in text for kind, text in outcomes) == 6
    requests, rejected = RequestQueue(store, KEY).all()
    assert not rejected and len(requests) == 3 and all(r.state == "PENDING" and r.seq == 0 for r in requests)
    assert {r.commit for r in requests} == set(commits.values())


def _upload(repo_id, files):
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    from huggingface_hub import CommitOperationAdd

    api.create_commit(repo_id, operations=[CommitOperationAdd(k, v) for k, v in files.items()], commit_message="up")


@pytest.mark.parametrize("model_id, why", [
    ("../etc/passwd", "invalid model id"), ("/abs/model", "invalid model id"), ("org/../x", "invalid model id"),
    ("org/name/extra", "invalid model id"), ("org/na me", "invalid model id"), ("org--a/b", "invalid model id"),
    ("onlyname", "invalid model id"), ("org/missing", "does not exist on the Hub"),
    ("org/pickle", "only as a pickle"), ("org/remote", "needs remote code"), ("org/pyfile", "needs remote code"),
    ("org/noweights", "no safetensors"),
])
def test_bad_submissions_are_refused_with_a_reason(hub, tmp_path, capsys, model_id, why):
    config = json.dumps({"architecture": "robust_resnet_tiny"}).encode()
    _upload("org/pickle", {"config.json": config, "pytorch_model.bin": b"\x80\x02pickle"})
    _upload("org/remote", {"config.json": json.dumps({"model_type": "x", "auto_map": {"AutoModel": "m.M"}}).encode(),
                           "model.safetensors": b"x"})
    _upload("org/pyfile", {"config.json": config, "model.safetensors": b"x", "modeling.py": b"import os"})
    _upload("org/noweights", {"config.json": config})
    store_dir = tmp_path / "store"
    assert main(["submit", model_id, "--store", str(store_dir)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and why in err, err
    assert LocalStore(store_dir).list("requests") == []


def test_unknown_revision_is_refused(hub, tmp_path, capsys):
    push_tiny(tmp_path, "org/tiny")
    assert main(["submit", "org/tiny", "--revision", "nope", "--store", str(tmp_path / "s")]) != 0
    assert "has no revision 'nope'" in capsys.readouterr().err


def test_round_trip_push_load_submit_run_page_and_model_index(hub, tmp_path, capsys):
    """push -> from_pretrained in three libraries -> submit -> run the queue -> the page and the model-index."""
    model_dir, _ = push_tiny(tmp_path, "org/robust", seed=3)
    model = robust_hub.from_pretrained(model_dir)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(robust_hub.from_pretrained("org/robust")(x), expected)
        assert torch.equal(timm.create_model("hf-hub:org/robust", pretrained=True).eval()(x), expected)
        assert torch.allclose(AutoModel.from_pretrained("org/robust").eval()(pixel_values=x).pooler_output, expected,
                              atol=1e-6)
    # the pushed card already has the loading snippets and the recipe section
    card = ModelCard.load("org/robust")
    assert 'timm.create_model("hf-hub:org/robust"' in card.text and "## Evaluation" in card.text

    store_dir, site = tmp_path / "store", tmp_path / "site"
    assert main(["submit", "org/robust", "--store", str(store_dir)]) == 0
    commit = HfApi().model_info("org/robust").sha
    assert f"at commit {commit}" in capsys.readouterr().out
    store = LocalStore(store_dir)
    summary = run_queue(store, KEY, fast_settings(), tmp_path / "work")
    rid = request_id("org/robust", commit)
    assert summary.finished == [rid] and not summary.failed and not summary.retry
    (req,), _ = RequestQueue(store, KEY).all()
    # claimed, the lease renewed before filing the results (still ours), finished
    assert req.state == "FINISHED" and history(store, rid) == ["PENDING", "RUNNING", "RUNNING", "FINISHED"]
    (result_path,) = store.list("results")
    rec = json.loads(store.read(result_path))["record"]
    assert rec["model"]["id"] == "org/robust" and rec["model"]["revision"] == commit
    aa = rec["metrics"]["autoattack_acc"]
    assert aa is not None and aa <= rec["metrics"]["pgd20_acc"] + 1e-9 <= rec["metrics"]["clean_acc"] + 2e-9

    board = build_site(store, KEY, site, endpoint=hub.url)
    html = (site / "index.html").read_text()
    (table,) = board.tables
    (row,) = table.rows
    assert row.model_id == "org/robust" and row.commit == commit and row.autoattack == aa
    assert f'href="{hub.url}/org/robust/commit/{commit}"' in html and f"{100 * aa:.2f}" in html
    assert f"[org/robust]({hub.url}/org/robust)" in (site / "leaderboard.md").read_text()

    # the owner pushes again with the leaderboard's results: they reach the model-index, pinned to `commit`
    key_file = tmp_path / "leaderboard.key"
    key_file.write_bytes(KEY)
    second = push_to_hub(str(model_dir), "org/robust", results=[str(store_dir)], key_file=str(key_file))
    assert second != commit
    card = ModelCard.load("org/robust")
    index = card.data.to_dict()["model-index"][0]["results"]
    aa_entries = [(m, r) for r in index for m in r["metrics"] if m["name"].startswith("AutoAttack")]
    assert [m["value"] for m, _ in aa_entries] == [round(100 * aa, 2)]
    assert commit[:7] in aa_entries[0][0]["name"]
    assert aa_entries[0][1]["source"]["url"].endswith(f"/org/robust/commit/{commit}")
    files = hub.files_at("org/robust")
    (yaml_name,) = [f for f in files if f.startswith(".eval_results/")]
    entries = yaml.safe_load(files[yaml_name])
    # AutoAttack ran on 8 of the 16 test images and SLF for 1 epoch: the task id says so
    assert {e["dataset"]["task_id"]: e["value"] for e in entries}["slf-autoattack-linf-8-255-subset-test16-aa8-epochs1"] == aa
    assert commit in entries[0]["notes"]


def test_pushing_again_keeps_earlier_results_pinned_to_their_commits(hub, tmp_path):
    from robust_hub.evaluation.runner import evaluate

    settings = fast_settings()
    model_dir, _ = push_tiny(tmp_path, "org/evolving", seed=1)
    kw = dict(protocols="slf", dataset=settings.dataset, metrics="clean", protocol_overrides={"epochs": 1},
              progress=False, print_table=False, device="cpu")
    first_clean = evaluate(str(model_dir), out_dir=tmp_path / "r1", **kw)[0]["metrics"]["clean_acc"]
    push_to_hub(str(model_dir), "org/evolving", results=[str(tmp_path / "r1")])
    repo = hub.get_repo("org/evolving")
    first_weights = [c.sha for c in repo.history(repo.branches["main"]) if c.title.startswith("Upload")][0]

    torch.manual_seed(9)  # new weights, evaluated and pushed
    robust_hub.create_backbone("robust_resnet_tiny").save_pretrained(model_dir)
    second_clean = evaluate(str(model_dir), out_dir=tmp_path / "r2", **kw)[0]["metrics"]["clean_acc"]
    push_to_hub(str(model_dir), "org/evolving", results=[str(tmp_path / "r2")])
    second_weights = [c.sha for c in repo.history(repo.branches["main"]) if c.title.startswith("Upload")][0]
    assert second_weights != first_weights

    files = hub.files_at("org/evolving")
    pinned = {json.loads(v)["model_commit"]: json.loads(v)["record"]["metrics"]["clean_acc"]
              for k, v in files.items() if k.startswith("eval_records/")}
    assert pinned == {first_weights: first_clean, second_weights: second_clean}
    assert len([f for f in files if f.startswith(".eval_results/")]) == 2
    # the weights those commits hold are the weights each record evaluated
    for sha, name in ((first_weights, "r1"), (second_weights, "r2")):
        rec = json.loads(next((tmp_path / name).glob("*.json")).read_text())
        import hashlib
        assert hashlib.sha256(hub.files_at("org/evolving", sha)["model.safetensors"]).hexdigest() == \
            rec["model"]["weights_sha256"]
    text = files["README.md"].decode()
    assert f"{100 * first_clean:.2f}" in text and f"{100 * second_clean:.2f}" in text and "(these weights)" in text


def test_refused_model_fails_with_reason_and_crash_is_retryable(hub, tmp_path, monkeypatch):
    _, good = push_tiny(tmp_path, "org/good")
    _upload("org/broken", {"config.json": json.dumps({"architecture": "robust_resnet_tiny", "robust_hub": {}}).encode(),
                           "model.safetensors": b"not safetensors at all"})
    store = LocalStore(tmp_path / "store")
    submit(store, "org/good")
    submit(store, "org/broken")

    import robust_hub.evaluation.runner as eval_runner
    real = eval_runner.evaluate

    def crash(model, **kw):
        if model == "org/good":
            raise RuntimeError("machine fell over")
        return real(model, **kw)

    monkeypatch.setattr(eval_runner, "evaluate", crash)
    summary = run_queue(store, KEY, fast_settings(), tmp_path / "work")
    good_id = request_id("org/good", good)
    assert list(summary.retry) == [good_id] and "machine fell over" in summary.retry[good_id]
    (broken_id, reason), = summary.failed.items()
    assert broken_id.startswith("org--broken--") and "not a valid safetensors file" in reason
    states = {r.model_id: r.state for r in RequestQueue(store, KEY).all()[0]}
    assert states == {"org/good": "PENDING", "org/broken": "FAILED"}

    monkeypatch.setattr(eval_runner, "evaluate", real)
    summary = run_queue(store, KEY, fast_settings(), tmp_path / "work")
    assert summary.finished == [good_id] and not summary.failed  # FAILED is final, not rerun
    assert {r.model_id: r.state for r in RequestQueue(store, KEY).all()[0]} == {"org/good": "FINISHED",
                                                                                "org/broken": "FAILED"}


def test_malformed_requests_and_tampered_records_are_rejected(tmp_path, capsys, monkeypatch):
    store = LocalStore(tmp_path / "store")
    good = record("org/a", SHA, aa=0.30)
    file_result(store, good)
    tampered_path = file_result(store, record("org/b", "b" * 40, aa=0.20))
    raw = json.loads(store.read(tampered_path))
    raw["record"]["metrics"]["autoattack_acc"] = 0.99  # someone edits the number in the shared store
    (store.root / tampered_path).write_text(json.dumps(raw))
    forged = record("org/c", "c" * 40, aa=0.9)
    file_result(store, forged, key=b"x" * 64)  # signed with another key
    misfiled = record("org/d", "d" * 40)
    from robust_hub.leaderboard.results import sign
    store.create(f"results/{request_id('org/a', SHA)}/moved.json", sign(misfiled, request_id("org/a", SHA), KEY))
    store.create("results/org--e--" + "e" * 40 + "/junk.json", b"{not json")
    store.create(f"requests/org--f--{'f' * 40}/0000.json", json.dumps({"model_id": "../f", "state": "PENDING"}).encode())
    store.create(f"requests/org--g--{'1' * 40}/0000.json", b"\xff\xfe")

    monkeypatch.setenv("ROBUST_HUB_LEADERBOARD_KEY", KEY.decode())
    assert main(["leaderboard", "build", "--store", str(store.root), "--site", str(tmp_path / "site")]) == 0
    out = capsys.readouterr().out
    board = build_board(store, KEY, "http://hub")
    assert [row.model_id for t in board.tables for row in t.rows] == ["org/a"]
    reasons = board.rejected
    assert "signature mismatch" in reasons[tampered_path]
    assert "signature mismatch" in next(v for k, v in reasons.items() if "org--c--" in k)
    assert "not what request" in next(v for k, v in reasons.items() if k.endswith("moved.json"))
    assert "not valid JSON" in next(v for k, v in reasons.items() if "org--e--" in k)
    assert out.count("warning: rejected") == 4
    malformed = {q["id"]: q["reason"] for q in board.requests if q["state"] == "MALFORMED"}
    assert "invalid model id" in malformed[f"org--f--{'f' * 40}"] and "not valid JSON" in malformed[f"org--g--{'1' * 40}"]
    # the runner closes malformed requests as FAILED with the reason, once
    summary = run_queue(store, KEY, fast_settings(), tmp_path / "work")
    assert set(summary.failed) == {f"org--f--{'f' * 40}", f"org--g--{'1' * 40}"}
    assert run_queue(store, KEY, fast_settings(), tmp_path / "work").failed == {}


def test_untrustworthy_scores_are_shown_flagged_and_unranked(tmp_path):
    store = LocalStore(tmp_path / "store")
    file_result(store, record("org/honest", "1" * 40, clean=0.8, pgd=0.45, aa=0.40))
    file_result(store, record("org/better", "2" * 40, clean=0.8, pgd=0.50, aa=0.45, flags=["autoattack_subset"]))
    file_result(store, record("org/masked", "3" * 40, clean=0.9, pgd=None, aa=None,
                              flags=["masked_gradients", "robust_acc_withheld"]))
    file_result(store, record("org/shattered", "4" * 40, clean=0.9, pgd=0.85, aa=0.60))  # PGD misled
    file_result(store, record("org/newflag", "5" * 40, clean=0.9, pgd=0.7, aa=0.69, flags=["square_beats_whitebox"]))
    file_result(store, record("org/random", "6" * 40, clean=0.5, pgd=0.55, aa=0.52))  # robust above clean
    (table,) = build_board(store, KEY, "http://hub").tables
    ranks = {row.model_id: (row.rank, row.unranked_because) for row in table.rows}
    assert ranks["org/better"] == (1, []) and ranks["org/honest"] == (2, [])
    assert ranks["org/masked"][0] is None and "masked_gradients" in ranks["org/masked"][1]
    assert ranks["org/shattered"] == (None, ["pgd20_far_above_autoattack"])
    assert ranks["org/newflag"] == (None, ["square_beats_whitebox"])
    assert ranks["org/random"][0] is None and "robust_above_clean" in ranks["org/random"][1]
    assert [row.model_id for row in table.rows][:2] == ["org/better", "org/honest"]  # unranked rows after
    assert verdict(record("m/x", SHA))[0]


@pytest.mark.parametrize("pgd,aa,above", [(0.5, 0.5, False), (0.505, 0.5, True), (0.5, 0.501, True)])
def test_any_robust_accuracy_above_clean_is_unranked(pgd, aa, above):
    rankable, reasons = verdict(record("m/x", SHA, clean=0.5, pgd=pgd, aa=aa))
    assert ("robust_above_clean" in reasons) == above and rankable == (not above)


def test_tables_split_by_protocol_and_budget(tmp_path):
    store = LocalStore(tmp_path / "store")
    file_result(store, record("org/a", "1" * 40, protocol="slf"))
    file_result(store, record("org/a", "1" * 40, protocol="aff"))
    file_result(store, record("org/b", "2" * 40, protocol="slf", n_test=50))
    tables = {(t.title.split(" ")[0], t.subtitle.split(" test images")[0].split(", ")[-1]): [r.model_id for r in t.rows]
              for t in build_board(store, KEY, "h").tables}
    assert tables == {("SLF", "100"): ["org/a"], ("AFF", "100"): ["org/a"], ("SLF", "50"): ["org/b"]}


def test_hub_dataset_store_holds_the_queue_and_results(hub, tmp_path):
    """... and what the model's own card claims is shown apart, as self-reported."""
    from robust_hub.evaluation.runner import evaluate

    model_dir, _ = push_tiny(tmp_path, "org/onhub")
    (own,) = evaluate(str(model_dir), protocols="slf", dataset=fast_settings().dataset, out_dir=tmp_path / "own",
                      metrics="clean", protocol_overrides={"epochs": 1}, progress=False, print_table=False, device="cpu")
    commit = push_to_hub(str(model_dir), "org/onhub", results=[str(tmp_path / "own")])
    assert main(["submit", "org/onhub", "--store", "hf://datasets/board/lb"]) == 0
    store = open_store("hf://datasets/board/lb")
    run_queue(store, KEY, fast_settings(), tmp_path / "work")
    files = hub.files_at("board/lb", repo_type="dataset")
    rid = request_id("org/onhub", commit)
    assert {f"requests/{rid}/{seq:04d}.json" for seq in range(4)} <= set(files)
    assert history(store, rid) == ["PENDING", "RUNNING", "RUNNING", "FINISHED"]
    board = build_board(store, KEY, hub.url)
    (row,) = board.tables[0].rows
    assert row.model_id == "org/onhub" and row.commit == commit and row.rank == 1
    (claim,) = board.self_reported
    assert claim["model_id"] == "org/onhub" and claim["value"] == round(100 * own["metrics"]["clean_acc"], 2)
    assert claim["metric"].startswith("clean accuracy")
    build_site(store, KEY, tmp_path / "site", endpoint=hub.url)
    html = (tmp_path / "site" / "index.html").read_text()
    assert "Self-reported" in html and "not verified" in html


def test_a_result_file_planted_before_the_run_fails_the_request(hub, tmp_path):
    _, commit = push_tiny(tmp_path, "org/victim")
    store = LocalStore(tmp_path / "store")
    submit(store, "org/victim")
    rid = request_id("org/victim", commit)
    # what the runner will write: learn the name from a run into another store, then plant junk there
    scratch = LocalStore(tmp_path / "scratch")
    submit(scratch, "org/victim")
    run_queue(scratch, KEY, fast_settings(), tmp_path / "w1")
    (path,) = scratch.list("results")
    assert store.create(path, b"{}")
    summary = run_queue(store, KEY, fast_settings(), tmp_path / "w2")
    assert "already in the store and was not written by this leaderboard" in summary.failed[rid]


@pytest.mark.parametrize("argv, why", [
    (["leaderboard", "build", "--site", "SITE"], "no leaderboard store"),
    (["leaderboard", "build", "--store", "hf://models/org/x", "--site", "SITE"], "only dataset repositories"),
    (["leaderboard", "build", "--store", "hf://datasets/just-a-name", "--site", "SITE"], "hf://datasets/ORG/NAME"),
    (["leaderboard", "build", "--store", "STORE", "--site", "SITE", "--key-file", "NOKEY"], "no leaderboard key"),
    (["leaderboard", "run", "--store", "STORE", "--site", "SITE", "--key-file", "KEY", "--eps", "8/0"], "--eps"),
    (["leaderboard", "run", "--store", "STORE", "--site", "SITE", "--key-file", "KEY", "--lease", "0"], "--lease"),
    (["submit", "org/x", "--store", "FILE"], "is a file, not a directory"),
])
def test_leaderboard_commands_refuse_bad_arguments_in_one_line(tmp_path, capsys, monkeypatch, argv, why):
    monkeypatch.delenv("ROBUST_HUB_LEADERBOARD_STORE", raising=False)
    monkeypatch.delenv("ROBUST_HUB_LEADERBOARD_KEY", raising=False)
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "KEY").write_text("k" * 64)
    argv = [str(tmp_path / a) if a in ("SITE", "STORE", "NOKEY", "KEY", "FILE") else a for a in argv]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and why in err, err
    assert not (tmp_path / "SITE").exists()


def test_the_page_leaves_a_directory_of_user_files_alone(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("a user's own page")
    (site / "notes.txt").write_text("years of work")
    store = LocalStore(tmp_path / "store")
    with pytest.raises(RobustHubError, match="not written by robust-hub"):
        build_site(store, KEY, site, endpoint="https://huggingface.co")
    assert (site / "index.html").read_text() == "a user's own page"
    build_site(store, KEY, site, endpoint="https://huggingface.co", overwrite=True)  # replaces only its own names
    assert "<html" in (site / "index.html").read_text() and (site / "notes.txt").read_text() == "years of work"
    fresh = tmp_path / "fresh"
    build_site(store, KEY, fresh, endpoint="https://huggingface.co")
    build_site(store, KEY, fresh, endpoint="https://huggingface.co")  # an earlier page is rebuilt in place
    assert sorted(p.name for p in fresh.iterdir() if not p.name.startswith(".")) == ["index.html", "leaderboard.md"]
