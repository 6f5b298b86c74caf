"""The leaderboard queue cannot be stopped, forked or padded: poison requests, racing runners, leases, forged files."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from robust_hub.cli import main
from robust_hub.leaderboard import signing
from robust_hub.leaderboard.render import build_board, build_site
from robust_hub.leaderboard.requests import MAX_TRIES, RequestQueue, request_id
from robust_hub.leaderboard.results import result_path, sign
from robust_hub.leaderboard.runner import EvalSettings, run_queue, submit
from robust_hub.leaderboard.store import LocalStore

from leaderboard_helpers import KEY, fast_settings, file_result, history, push_tiny, record

WORKER = Path(__file__).with_name("leaderboard_worker.py")
SHAS = [f"{i}" * 40 for i in range(1, 10)]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def evaluations(monkeypatch):
    """The queue with a stand-in evaluation (no Hub, no model): each call is recorded, and returns a valid record."""
    import robust_hub.evaluation.runner as evaluation_runner
    import robust_hub.leaderboard.runner as leaderboard_runner

    calls, during = [], []

    def evaluate(model_id, revision, **_):
        calls.append((model_id, revision))
        for action in during:
            action(model_id, revision)
        return [record(model_id, revision)]

    monkeypatch.setattr(evaluation_runner, "evaluate", evaluate)
    monkeypatch.setattr(leaderboard_runner, "inspect_model", lambda model_id, revision: (revision, {}))
    monkeypatch.setattr(leaderboard_runner, "_self_reported", lambda model_id, commit: [])
    evaluate.calls, evaluate.during = calls, during
    return evaluate


def _state(store, rid):
    request, _ = RequestQueue(store, KEY).load(rid)
    return request


def _chain(store, rid):
    """The request's events, checked to be one unforked sequence of verified events: slot n is file n."""
    paths = store.list(f"requests/{rid}")
    assert paths == [f"requests/{rid}/{seq:04d}.json" for seq in range(len(paths))]
    queue = RequestQueue(store, KEY)
    events = [json.loads(store.read(paths[0]))]
    for seq, path in enumerate(paths[1:], 1):
        events.append(signing.verified(json.loads(store.read(path)), KEY))
        assert events[-1]["seq"] == seq and events[-1]["request_id"] == rid
    assert not queue.load(rid)[1]  # nothing rejected
    return events


# ------------------------------------------------------------------------------------------------ one history

def test_a_slot_goes_to_one_writer_whatever_state_it_records(store):
    """Today's names held the state, so FINISHED and RUNNING both took slot 2; now one slot is one file."""
    queue = RequestQueue(store, KEY)
    pending = queue.submit("org/m", SHAS[0], "main")
    running = queue.claim(pending)
    assert queue.append(running, "FINISHED", records=1) is not None
    assert queue.append(running, "RUNNING", runner={"host": "x", "pid": 1}, lease_until="2100-01-01T00:00:00+00:00") \
        is None  # a reclaim that saw the same RUNNING event
    assert queue.claim(pending) is None  # and a second runner that saw PENDING
    assert history(store, pending.id) == ["PENDING", "RUNNING", "FINISHED"] and _state(store, pending.id).state == \
        "FINISHED"


def test_racing_claims_give_the_request_to_exactly_one(store):
    queue = RequestQueue(store, KEY)
    pending = queue.submit("org/m", SHAS[0], "main")
    winners = []

    def claim(state):
        if RequestQueue(store, KEY).append(pending, state, runner={"host": "h", "pid": 1}, tries=1,
                                           lease_until="2100-01-01T00:00:00+00:00") is not None:
            winners.append(state)

    threads = [threading.Thread(target=claim, args=(s,)) for s in ["RUNNING", "FAILED", "FINISHED", "RUNNING"] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert history(store, pending.id) == ["PENDING", winners[0]] and _state(store, pending.id).state == winners[0]


def _start(tmp_path, store_location, eval_seconds, lease_seconds, *flags):
    return subprocess.Popen([sys.executable, str(WORKER), store_location, str(tmp_path / "evaluations.log"),
                             str(eval_seconds), str(lease_seconds), *flags], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _started(tmp_path):
    log = tmp_path / "evaluations.log"
    return log.read_text().splitlines() if log.exists() else []


def _wait_for(condition, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _finish(process):
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_two_runners_and_a_reclaim_never_fork_a_history(store, tmp_path):
    """Processes: runners A and B race for the queue; C runs with --reclaim once both are evaluating. Each evaluation
    lasts over three leases, so a runner that did not keep its lease would lose its request to C or to the other."""
    queue = RequestQueue(store, KEY)
    rids = [queue.submit(f"org/m{i}", SHAS[i], "main").id for i in range(3)]
    where = str(store.root) if isinstance(store, LocalStore) else f"hf://datasets/{store.repo_id}"
    go_a, go_c = tmp_path / "go-ab", tmp_path / "go-c"
    a, b = (_start(tmp_path, where, 10, 3, "--wait-for", str(go_a)) for _ in range(2))
    c = _start(tmp_path, where, 10, 3, "--reclaim", "--wait-for", str(go_c))
    go_a.touch()
    _wait_for(lambda: len(_started(tmp_path)) >= 2)
    go_c.touch()
    summaries = [_finish(p) for p in (a, b, c)]

    starts = [line.split()[1:3] for line in _started(tmp_path)]
    assert sorted(request_id(m, sha) for m, sha in starts) == sorted(rids)  # each evaluated exactly once
    assert sorted(r for s in summaries for r in s["finished"]) == sorted(rids)
    assert not {request_id(m, sha) for m, sha in starts[:2]} & set(summaries[2]["finished"])  # C took no live one
    for rid in rids:
        events = _chain(store, rid)
        states = [e["state"] for e in events]
        assert states[0] == "PENDING" and states[-1] == "FINISHED" and set(states[1:-1]) == {"RUNNING"}
        assert len(states) >= 4  # claimed, renewed while evaluating, renewed before filing, finished
        assert {e["tries"] for e in events[1:]} == {1} and len({e["runner"]["pid"] for e in events[1:-1]}) == 1
        assert len(store.list(f"results/{rid}")) == 1


def test_reclaim_takes_over_at_once_from_a_killed_runner(tmp_path):
    store = LocalStore(tmp_path / "store")
    rid = RequestQueue(store, KEY).submit("org/m", SHAS[0], "main").id
    doomed = _start(tmp_path, str(store.root), 600, 3600)
    reclaimer = _start(tmp_path, str(store.root), 0, 3600, "--reclaim", "--wait-for", str(tmp_path / "go"))
    _wait_for(lambda: _started(tmp_path))
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    assert _state(store, rid).state == "RUNNING" and not _state(store, rid).lease_expired
    (tmp_path / "go").touch()
    summary = _finish(reclaimer)
    assert summary["finished"] == [rid]
    events = _chain(store, rid)
    assert [e["state"] for e in events] == ["PENDING", "RUNNING", "RUNNING", "RUNNING", "FINISHED"]
    assert [e.get("tries") for e in events[1:]] == [1, 2, 2, 2]
    assert events[1]["runner"]["pid"] == doomed.pid != events[2]["runner"]["pid"]


# --------------------------------------------------------------------------------------------------- leases

def _held_by(queue, rid, runner, lease_s, tries=1):
    """A RUNNING event of another runner, as that runner would have signed it."""
    pending, _ = queue.load(rid)
    until = (datetime.now(timezone.utc) + timedelta(seconds=lease_s)).isoformat()
    return queue.append(pending, "RUNNING", runner=runner, tries=tries, lease_until=until)


def _exited_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_an_expired_lease_is_taken_over_by_a_later_run_and_a_live_one_is_not(tmp_path, evaluations):
    store = LocalStore(tmp_path / "store")
    queue = RequestQueue(store, KEY)
    rids = [queue.submit(f"org/m{i}", SHAS[i], "main").id for i in range(4)]
    elsewhere = {"host": "another-machine", "pid": 1}
    here_gone = {"host": socket.gethostname(), "pid": _exited_pid()}
    _held_by(queue, rids[0], elsewhere, lease_s=-1)  # its runner stopped renewing: the lease ran out
    _held_by(queue, rids[1], elsewhere, lease_s=3600)  # a live runner elsewhere: only the lease can tell
    _held_by(queue, rids[2], here_gone, lease_s=3600)  # ran here and exited: gone, but only --reclaim looks
    _held_by(queue, rids[3], {"host": socket.gethostname(), "pid": os.getpid()}, lease_s=3600)  # alive here

    summary = run_queue(store, KEY, EvalSettings(), tmp_path / "work")
    assert summary.finished == [rids[0]] and _state(store, rids[0]).tries == 2
    assert [_state(store, rid).state for rid in rids[1:]] == ["RUNNING"] * 3
    summary = run_queue(store, KEY, EvalSettings(), tmp_path / "work", reclaim=True)
    assert summary.finished == [rids[2]]
    assert [_state(store, rid).state for rid in (rids[1], rids[3])] == ["RUNNING", "RUNNING"]
    assert len(evaluations.calls) == 2


def test_a_live_runner_keeps_its_lease_through_a_long_evaluation(tmp_path, evaluations):
    """The evaluation lasts over three leases; meanwhile other runs (with --reclaim) find nothing to take."""
    store = LocalStore(tmp_path / "store")
    rid = RequestQueue(store, KEY).submit("org/m", SHAS[0], "main").id
    others = []

    def meanwhile(model_id, revision):
        for _ in range(5):
            time.sleep(1.2)
            others.append(run_queue(store, KEY, EvalSettings(), tmp_path / "other", reclaim=True))

    evaluations.during.append(meanwhile)
    summary = run_queue(store, KEY, EvalSettings(), tmp_path / "work", lease_s=2)
    assert summary.finished == [rid] and len(evaluations.calls) == 1
    assert not any(o.finished or o.failed or o.retry for o in others)
    states = [e["state"] for e in _chain(store, rid)]
    assert states[-1] == "FINISHED" and states.count("RUNNING") >= 5


# ------------------------------------------------------------------------------------------- poison requests

def test_poison_requests_end_failed_while_the_next_request_finishes(hub, tmp_path, capsys, monkeypatch):
    from huggingface_hub import CommitOperationAdd, HfApi

    _, good = push_tiny(tmp_path, "org/good")
    api = HfApi()
    api.create_repo("org/listargs")
    config = {"architecture": "robust_resnet_tiny", "model_args": ["not", "a", "mapping"], "robust_hub": {}}
    api.create_commit("org/listargs", commit_message="up", operations=[
        CommitOperationAdd("config.json", json.dumps(config).encode()),
        CommitOperationAdd("model.safetensors", (tmp_path / "model-org_good-0" / "model.safetensors").read_bytes())])
    store = LocalStore(tmp_path / "store")
    submit(store, "org/listargs")
    submit(store, "org/good")
    good_id = request_id("org/good", good)
    # a RUNNING event whose lease is no timestamp, on the good request (unsigned, as anyone could write it)
    assert store.create(f"requests/{good_id}/0001.json", json.dumps(
        {"state": "RUNNING", "lease_until": "soon", "runner": {"host": "x", "pid": 1}}).encode())
    # and a request folder with a space in its name
    (store.root / "requests" / "org--a b--c").mkdir(parents=True)
    (store.root / "requests" / "org--a b--c" / "0000.json").write_text(json.dumps({"state": "PENDING"}))
    monkeypatch.setenv("ROBUST_HUB_LEADERBOARD_KEY", KEY.decode())
    assert main(["leaderboard", "build", "--store", str(store.root), "--site", str(tmp_path / "site")]) == 0
    out = capsys.readouterr().out
    assert f"rejected requests/{good_id}/0001.json: not signed by the leaderboard" in out
    assert "rejected requests/org--a b--c/0000.json: not a request" in out

    for attempt in range(MAX_TRIES):  # however the loader reports the bad config, it ends within the bound
        summary = run_queue(store, KEY, fast_settings(), tmp_path / "work")
        if attempt == 0:
            assert summary.finished == [good_id]
    states = {r.model_id: (r.state, r.reason) for r in RequestQueue(store, KEY).all()[0] if r.model_id}
    assert states["org/good"] == ("FINISHED", "")
    state, reason = states["org/listargs"]  # the loader's own error, or the repeated crash: FAILED within the bound
    assert state == "FAILED" and ("model_args" in reason or "must be a mapping" in reason), reason
    assert run_queue(store, KEY, fast_settings(), tmp_path / "work") == type(summary)()  # nothing is retried
    board = build_board(store, KEY, "h")
    assert [row.model_id for t in board.tables for row in t.rows] == ["org/good"]


def test_a_crash_that_repeats_fails_after_max_tries_and_a_runner_dying_each_time_too(tmp_path, evaluations):
    store = LocalStore(tmp_path / "store")
    queue = RequestQueue(store, KEY)
    crashing, dying, fine = (queue.submit(f"org/m{i}", SHAS[i], "main").id for i in range(3))

    def crash(model_id, revision):
        if request_id(model_id, revision) == crashing:
            raise RuntimeError("segfault-like")

    evaluations.during.append(crash)
    for tries in range(1, MAX_TRIES + 1):  # runners killed on it, one after the other: each claim was a try
        _held_by(queue, dying, {"host": "gone", "pid": 1}, lease_s=-1, tries=tries)
    summaries = []
    for tries in range(1, MAX_TRIES + 1):
        summaries.append(run_queue(store, KEY, EvalSettings(), tmp_path / "work"))
        assert _state(store, crashing).tries == tries
    assert [crashing in s.retry for s in summaries] == [True] * (MAX_TRIES - 1) + [False]
    assert _state(store, crashing).state == "FAILED" and "crashed on each of 3 tries" in _state(store, crashing).reason
    assert "RuntimeError: segfault-like" in summaries[-1].failed[crashing]
    assert _state(store, dying).state == "FAILED" and f"tried {MAX_TRIES} times" in summaries[0].failed[dying]
    assert summaries[0].finished == [fine]
    assert [c[0] for c in evaluations.calls].count("org/m0") == MAX_TRIES  # never more
    assert run_queue(store, KEY, EvalSettings(), tmp_path / "work") == type(summaries[0])()


# ---------------------------------------------------------------------------------------------- forged files

def test_unsigned_and_forged_events_count_for_nothing(tmp_path, evaluations):
    store = LocalStore(tmp_path / "store")
    queue = RequestQueue(store, KEY)
    rid = queue.submit("org/m", SHAS[0], "main").id
    other = queue.submit("org/o", SHAS[1], "main").id
    claim = [{"task": "x", "dataset": "cifar10", "metric": "AutoAttack", "value": 99.0}]
    forged = {"state": "FINISHED", "request_id": rid, "seq": 1, "self_reported": claim, "model_id": "org/m",
              "commit": SHAS[0]}
    store.create(f"requests/{rid}/0001.json", json.dumps(forged).encode())  # unsigned
    store.create(f"requests/{rid}/0002.json", signing.sign({**forged, "seq": 2}, b"x" * 64))  # another key
    store.create(f"requests/{rid}/0003.json", signing.sign({**forged, "seq": 4}, KEY))  # signed for another slot
    store.create(f"requests/{other}/0001.json", signing.sign({**forged, "request_id": rid}, KEY))  # another request
    board = build_board(store, KEY, "h")
    assert {q["id"]: q["state"] for q in board.requests} == {rid: "PENDING", other: "PENDING"}
    assert board.self_reported == []
    assert "not signed" in board.rejected[f"requests/{rid}/0001.json"]
    assert "signature mismatch" in board.rejected[f"requests/{rid}/0002.json"]
    assert "slot 4, not" in board.rejected[f"requests/{rid}/0003.json"]
    assert f"signed for '{rid}' slot 1, not {other}" in board.rejected[f"requests/{other}/0001.json"]

    assert sorted(run_queue(store, KEY, EvalSettings(), tmp_path / "work").finished) == sorted([rid, other])
    assert history(store, rid)[4:] == ["RUNNING", "RUNNING", "FINISHED"]  # written after the forged slots
    assert not build_board(store, KEY, "h").self_reported


# ---------------------------------------------------------------------------------------------------- results

def test_one_request_one_result_and_malformed_results_are_listed_not_raised(tmp_path, capsys, monkeypatch):
    store = LocalStore(tmp_path / "store")
    a, b = record("org/a", SHAS[0], aa=0.30), record("org/b", SHAS[1], aa=0.20)
    a_path, b_path = file_result(store, a), file_result(store, b)
    rid_a = request_id("org/a", SHAS[0])
    copy = f"results/{rid_a}/copy.json"  # the same signed bytes under another name: a second row of org/a
    store.create(copy, store.read(a_path))
    # b's result, signed and unchanged, filed where a's results go, under the name it has in b's folder
    misfiled = f"results/{rid_a}/{b_path.rsplit('/', 1)[1]}"
    store.create(misfiled, store.read(b_path))
    nan = f"results/{request_id('org/c', SHAS[2])}/nan.json"
    store.create(nan, store.read(a_path).replace(b'"autoattack_acc": 0.3', b'"autoattack_acc": NaN'))
    odd = record("org/d", SHAS[3])
    odd["metric_set"] = [["clean"]]
    odd_path = f"results/{request_id('org/d', SHAS[3])}/odd.json"
    store.create(odd_path, sign(odd, request_id("org/d", SHAS[3]), KEY))
    store.create(f"results/{rid_a}/list.json", b"[1, 2]")

    monkeypatch.setenv("ROBUST_HUB_LEADERBOARD_KEY", KEY.decode())
    assert main(["leaderboard", "build", "--store", str(store.root), "--site", str(tmp_path / "site")]) == 0
    out = capsys.readouterr().out
    board = build_board(store, KEY, "h")
    assert sorted(row.model_id for t in board.tables for row in t.rows) == ["org/a", "org/b"]
    assert f"belongs at {a_path}" in board.rejected[copy]
    assert f"a result of request {request_id('org/b', SHAS[1])} belongs at {b_path}" in board.rejected[misfiled]
    assert "not valid JSON (NaN is not a JSON number)" in board.rejected[nan]
    assert "invalid result record" in board.rejected[odd_path]
    assert "not a signed leaderboard result" in board.rejected[f"results/{rid_a}/list.json"]
    assert out.count("warning: rejected") == 5 and "Traceback" not in out
    assert result_path(a, rid_a) == a_path


# --------------------------------------------------------------------------------------------------- Markdown

HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "![pixel](https://evil.example/p.png)",
           "[click](javascript:alert(1))", "a | b\n| c"]


def test_markdown_escapes_user_html(tmp_path):
    store = LocalStore(tmp_path / "store")
    queue = RequestQueue(store, KEY)
    pending = queue.submit("org/m", SHAS[0], "main")
    claims = [{"task": "t", "dataset": text, "metric": text, "value": 1.0} for text in HOSTILE]
    queue.append(queue.claim(pending), "FINISHED", records=0, self_reported=claims)
    file_result(store, record("org/m", SHAS[0], flags=[HOSTILE[0]]))
    build_site(store, KEY, tmp_path / "site", endpoint="https://hub.example")
    markdown = (tmp_path / "site" / "leaderboard.md").read_text()
    rendered = MarkdownIt("commonmark").enable("table").render(markdown)
    assert "<script" not in rendered and "<img" not in rendered and 'href="javascript' not in rendered
    assert rendered.count("<a href=") == 2 and rendered.count("<tr>") == 1 + 1 + 1 + len(HOSTILE)  # 2 headers, rows
    for text in HOSTILE:  # each shows as the text it is
        shown = " ".join(text.split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert rendered.count(shown.replace('"', "&quot;")) >= 2, text
