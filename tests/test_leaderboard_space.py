"""The page published as a static Space, against the Hub stand-in."""

import pytest
import yaml
from huggingface_hub import HfApi

from robust_hub.cli import main
from robust_hub.leaderboard.store import LocalStore

from leaderboard_helpers import KEY, file_result, record


@pytest.fixture
def board(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUST_HUB_LEADERBOARD_KEY", KEY.decode())
    store = LocalStore(tmp_path / "store")
    file_result(store, record("org/a", "a" * 40, aa=0.37))
    return store


def metadata(text):
    return yaml.safe_load(text.split("---")[1])


def test_build_publishes_the_page_as_a_static_space(hub, tmp_path, board, capsys):
    site = tmp_path / "site"
    assert main(["leaderboard", "build", "--store", str(board.root), "--site", str(site), "--space", "lab/board"]) == 0
    assert f"{hub.url}/spaces/lab/board" in capsys.readouterr().out
    assert hub.get_repo("lab/board", "space").sdk == "static"
    files = hub.files_at("lab/board", repo_type="space")
    assert sorted(files) == [".gitattributes", "README.md", "index.html", "leaderboard.md"]
    assert files["index.html"] == (site / "index.html").read_bytes() and b"37.00" in files["index.html"]
    assert files["leaderboard.md"] == (site / "leaderboard.md").read_bytes()
    meta = metadata(files["README.md"].decode())
    assert meta["sdk"] == "static" and meta["app_file"] == "index.html" and "robust-hub-leaderboard" in meta["tags"]
    assert HfApi().space_info("lab/board").sdk == "static"

    # a new result, built again: the same Space gets the new page, one more commit
    file_result(board, record("org/b", "b" * 40, aa=0.41))
    before = hub.commit_count("lab/board", "space")
    assert main(["leaderboard", "build", "--store", str(board.root), "--site", str(site), "--space", "lab/board"]) == 0
    assert hub.commit_count("lab/board", "space") == before + 1
    assert b"41.00" in hub.files_at("lab/board", repo_type="space")["index.html"]


def test_a_space_holding_someone_elses_files_is_refused_and_left_alone(hub, tmp_path, board, capsys):
    api = HfApi()
    api.create_repo("lab/app", repo_type="space", space_sdk="gradio")
    api.upload_file(path_or_fileobj=b"---\nsdk: gradio\n---\nmy app\n", path_in_repo="README.md", repo_id="lab/app",
                    repo_type="space")
    api.upload_file(path_or_fileobj=b"<p>mine</p>", path_in_repo="index.html", repo_id="lab/app", repo_type="space")
    before = hub.files_at("lab/app", repo_type="space")
    site = tmp_path / "site"
    assert main(["leaderboard", "build", "--store", str(board.root), "--site", str(site), "--space", "lab/app"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "robust-hub did not write" in err
    assert hub.files_at("lab/app", repo_type="space") == before and not site.exists()


@pytest.mark.parametrize("space", ["noslash", "a/b/c", "../x"])
def test_a_bad_space_id_is_one_error_line(hub, tmp_path, board, capsys, space):
    argv = ["leaderboard", "build", "--store", str(board.root), "--site", str(tmp_path / "s"), "--space", space]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --space") and "\n" not in err
