"""How tables name, rank and pin models: the submitted name, competition ranks, self-reported claims at their commit."""

import re

import pytest
from huggingface_hub import HfApi, ModelCard

from robust_hub.evaluation.runner import format_table
from robust_hub.hub_push import push_to_hub
from robust_hub.leaderboard.render import build_board, build_site
from robust_hub.leaderboard.requests import RequestQueue
from robust_hub.leaderboard.runner import _self_reported
from robust_hub.leaderboard.store import LocalStore

from leaderboard_helpers import KEY, file_result, push_tiny, record

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_equal_scores_share_a_rank_and_the_next_rank_skips(tmp_path):
    """Competition ranking by AutoAttack: 0.40, 0.40, 0.30, 0.30, 0.20 rank 1, 1, 3, 3, 5."""
    store = LocalStore(tmp_path / "store")
    scores = {"org/a": (0.40, 0.80), "org/b": (0.40, 0.70), "org/c": (0.30, 0.90), "org/d": (0.30, 0.60),
              "org/e": (0.20, 0.90)}
    for i, (model, (aa, clean)) in enumerate(scores.items()):
        file_result(store, record(model, f"{i:x}" * 40, clean=clean, pgd=aa + 0.01, aa=aa))
    board = build_site(store, KEY, tmp_path / "site", endpoint="https://huggingface.co")
    (table,) = board.tables
    assert [(r.model_id, r.rank) for r in table.rows] == [("org/a", 1), ("org/b", 1), ("org/c", 3), ("org/d", 3),
                                                          ("org/e", 5)]
    md = (tmp_path / "site" / "leaderboard.md").read_text()
    assert re.findall(r"^\| (\d) \| \[org/(\w)\]", md, re.M) == [("1", "a"), ("1", "b"), ("3", "c"), ("3", "d"),
                                                                 ("5", "e")]
    html = (tmp_path / "site" / "index.html").read_text()
    assert re.findall(r'<td class="num" data-value="(\d)">', html) == ["1", "1", "3", "3", "5"]


def test_eval_table_names_a_model_by_its_id_or_its_path_not_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = format_table([record(str(tmp_path / "outputs" / "offline" / "model"), "local-sha256:" + "0" * 64),
                         record("org/robust", "a" * 40), record("/elsewhere/run/model", "b" * 40)]).splitlines()
    names = [line.split()[0] for line in rows[2:]]
    assert names == ["outputs/offline/model", "org/robust", "/elsewhere/run/model"]


def test_a_self_reported_claim_is_shown_at_the_commit_it_names(hub, tmp_path):
    """A push pins its results to the weights' commit and puts the card on top of it: the claim's label says
    '@ WEIGHTS', and the table's commit column must say the same, not the card's later commit."""
    model_dir, weights_commit = push_tiny(tmp_path, "org/claims")
    results = LocalStore(tmp_path / "published")
    file_result(results, record("org/claims", weights_commit, aa=0.31))
    key_file = tmp_path / "leaderboard.key"
    key_file.write_bytes(KEY)  # push publishes a store's results only when the leaderboard's key verifies them
    head = push_to_hub(str(model_dir), "org/claims", results=[str(results.root)], key_file=str(key_file))
    assert head != weights_commit == HfApi().list_repo_commits("org/claims")[1].commit_id
    assert f"@ {weights_commit[:7]}" in str(ModelCard.load("org/claims").data.eval_results)

    claims = _self_reported("org/claims", head)
    assert claims and {c["commit"] for c in claims} == {weights_commit}
    board_store = LocalStore(tmp_path / "board")
    queue = RequestQueue(board_store, KEY)
    queue.append(queue.submit("org/claims", head, "main"), "FINISHED", records=0, self_reported=claims)
    board = build_board(board_store, KEY, hub.url)
    for claim in board.self_reported:
        label = re.search(r"@ ([0-9a-f]{7})", claim["metric"]).group(1)
        assert claim["commit"][:7] == label == weights_commit[:7]
    site = tmp_path / "site"
    build_site(board_store, KEY, site, endpoint=hub.url)
    assert f"<code>{weights_commit[:7]}</code>" in (site / "index.html").read_text()
    assert f"<code>{head[:7]}</code>" not in (site / "index.html").read_text()


def test_a_claim_naming_another_repos_commit_stays_at_the_card_commit():
    from robust_hub.leaderboard.runner import _claimed_commit

    assert _claimed_commit("org/m", "https://hf.co/org/m/commit/" + "c" * 40) == "c" * 40
    assert _claimed_commit("org/m", "https://hf.co/evil/m/commit/" + "c" * 40) is None
    assert _claimed_commit("org/m", "https://hf.co/org/m/commit/" + "c" * 39) is None
    assert _claimed_commit("org/m", None) is None
