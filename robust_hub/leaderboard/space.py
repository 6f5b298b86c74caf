"""Publish the leaderboard page as a static Hugging Face Space: index.html, leaderboard.md and the Space's README.

The Space is where the ecosystem looks for leaderboards. It is written in one commit, and only to a Space that is
new, empty, or an earlier robust-hub leaderboard (its README carries ``SPACE_TAG``): a Space holding anyone
else's files is refused, never overwritten.
"""

from __future__ import annotations

from pathlib import Path

from robust_hub.errors import RobustHubError
from robust_hub.leaderboard.store import _hub_errors

SPACE_TAG = "robust-hub-leaderboard"
PAGE_FILES = ("index.html", "leaderboard.md")
HUB_OWN_FILES = {".gitattributes"}  # what the Hub puts into a new repository


def space_readme() -> str:
    from huggingface_hub import SpaceCard, SpaceCardData

    data = SpaceCardData(title="robust-hub leaderboard", sdk="static", app_file="index.html",
                         tags=[SPACE_TAG, "leaderboard", "adversarial-robustness"])
    text = ("# robust-hub leaderboard\n\nRobust accuracy of self-supervised backbones, measured by the leaderboard's "
            "own runs (see `leaderboard.md`). Written by `robust-hub leaderboard build --space`.\n")
    return str(SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{text}"))


def check_space(repo_id: str) -> bool:
    """Whether the Space ``repo_id`` exists and may receive the page; RobustHubError when it may not."""
    from huggingface_hub import HfApi, SpaceCard, hf_hub_download

    from robust_hub.leaderboard.requests import NAME

    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(map(NAME.fullmatch, repo_id.split("/"))):
        raise RobustHubError(f"--space {repo_id!r}: a Space is ORG/NAME")
    api = HfApi()
    with _hub_errors(repo_id, what="the Space"):
        if not api.repo_exists(repo_id, repo_type="space"):
            return False
        info = api.space_info(repo_id)
        files = {s.rfilename for s in info.siblings or []} - HUB_OWN_FILES
        if not files:
            return True
        ours = "README.md" in files and SPACE_TAG in (SpaceCard.load(
            hf_hub_download(repo_id, "README.md", repo_type="space", revision=info.sha),
            ignore_metadata_errors=True).data.tags or [])
    if not ours:
        raise RobustHubError(f"the Space {repo_id} holds files robust-hub did not write ({sorted(files)[0]}, ...); "
                             "give a new or empty Space, or an earlier robust-hub leaderboard")
    return True


def publish_space(site_dir: str | Path, repo_id: str) -> str:
    """Upload the page in ``site_dir`` to the static Space ``repo_id`` (created if needed); its URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    exists = check_space(repo_id)
    site = Path(site_dir)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=(site / name).read_bytes())
                  for name in PAGE_FILES]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=space_readme().encode()))
    with _hub_errors(repo_id, what="the Space"):
        if not exists:
            api.create_repo(repo_id, repo_type="space", space_sdk="static")
        api.create_commit(repo_id, repo_type="space", operations=operations,
                          commit_message="robust-hub leaderboard: rebuild the page")
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/spaces/{repo_id}"
