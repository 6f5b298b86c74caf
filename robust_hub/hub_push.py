"""Share a saved backbone on the Hugging Face Hub: ``push_to_hub`` and the ``robust-hub push`` command.

The directory is checked first (config.json, safetensors weights that are finite and match the config), so a
broken model never reaches the Hub. Pickled weights are never uploaded. Errors from the Hub (no such repo, no
permission, Hub unreachable, offline mode) become one-line ``RobustHubError``s.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from robust_hub.errors import RobustHubError

# Never pushed: robust-hub only loads safetensors, and a pickle on the Hub is a code-execution risk for others.
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt"]


def validate_model_dir(model_dir: str | Path) -> dict:
    """Check that ``model_dir`` loads as a robust-hub model, strictly; return its config.

    This is exactly what ``from_pretrained`` (and so every user of the pushed repo) does: ``read_config``,
    ``load_weights`` (safetensors only, finite values) and a strict ``load_state_dict`` into the architecture
    the config names.
    """
    from robust_hub.models.hub import from_pretrained

    path = Path(model_dir)
    if not path.is_dir():  # checked here: from_pretrained would take a missing 'org/name' path for a Hub id
        raise RobustHubError(f"model directory {model_dir} does not exist; save a model with save_pretrained first")
    return from_pretrained(path).hub_config


def files_to_upload(model_dir: Path) -> list[Path]:
    """The regular files of ``model_dir`` a push uploads; a symbolic link anywhere inside is refused, never followed
    (it could point at any file of this machine)."""
    out = []
    for root, dirs, files in os.walk(model_dir):
        for name in sorted(dirs + files):
            path = Path(root) / name
            if path.is_symlink():
                raise RobustHubError(f"{path} is a symbolic link; push uploads only the regular files inside "
                                     f"{model_dir}: replace the link by the file or remove it")
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [Path(root) / f for f in files if (Path(root) / f).is_file()]
    return [p for p in sorted(out) if not any(part.startswith(".") for part in p.relative_to(model_dir).parts)
            and p.name != "README.md" and not any(p.match(pattern) for pattern in PICKLE_PATTERNS)]


def push_to_hub(model_dir: str | Path, repo_id: str, *, revision: str | None = None, private: bool = False,
                commit_message: str | None = None, token: str | None = None, results: list[str] = (),
                key_file: str | None = None) -> str:
    """Upload a saved robust-hub model directory to ``repo_id`` (created if needed); return the commit sha.

    The card is the one card (:mod:`robust_hub.model_card`) with the results already in the repo plus those found
    in ``results`` (``robust-hub eval --out`` directories, or leaderboard stores whose results are verified with
    the leaderboard's key from ``key_file``, ``$ROBUST_HUB_LEADERBOARD_KEY`` or the default key file; refused
    ones are warned about and left out); see :mod:`robust_hub.publishing`. ``revision`` is a branch, created
    from ``main`` when it does not exist yet.
    ``token`` defaults to the usual huggingface_hub token (``HF_TOKEN`` or ``hf auth login``).
    """
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".")) or repo_id.endswith("/"):
        raise RobustHubError(f"{repo_id!r} is not a Hub repo id of the form 'org/name'")
    from robust_hub.models.hub import check_repo_id

    check_repo_id(repo_id)
    if Path(model_dir).is_dir():
        files_to_upload(Path(model_dir))  # before anything reads a file through a link
    config = validate_model_dir(model_dir)
    from robust_hub.publishing import is_store

    key = None
    if any(is_store(source) for source in results):  # read before anything is uploaded
        from robust_hub.leaderboard.results import load_key

        key = load_key(key_file)

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import httpx

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        return _push(api, Path(model_dir), repo_id, config, revision, list(results), key,
                     commit_message or f"Upload {config['architecture']} with robust-hub")
    except OfflineModeIsEnabled:
        raise RobustHubError("cannot push while HF_HUB_OFFLINE is set; unset it to reach the Hub") from None
    except RevisionNotFoundError:
        raise RobustHubError(f"{repo_id!r} has no branch {revision!r} and it could not be created") from None
    except RepositoryNotFoundError:
        raise RobustHubError(f"cannot push to {repo_id!r}: it does not exist or this token has no write access") from None
    except HfHubHTTPError as error:
        raise RobustHubError(f"could not push to {repo_id!r}: {_one_line(error)}") from None
    except httpx.HTTPError as error:
        raise RobustHubError(f"could not push to {repo_id!r}: the Hub at {api.endpoint} cannot be reached "
                             f"({type(error).__name__})") from None


def _push(api, model_dir: Path, repo_id: str, config: dict, revision: str | None, results: list[str],
          key: bytes | None, message: str) -> str:
    """One commit with the weights and the card; two when local results must be pinned to the weights' commit."""
    from huggingface_hub import CommitOperationAdd

    from robust_hub.publishing import card_operations, collect_results, evidence_to_upload

    local, leaderboard, refused = collect_results(model_dir, repo_id, results, key)
    evidence = evidence_to_upload(results, local, leaderboard)  # checked before anything is uploaded
    for path, reason in refused.items():
        print(f"warning: not published: {path}: {reason}", file=sys.stderr)
    files = [CommitOperationAdd(str(p.relative_to(model_dir)), str(p)) for p in files_to_upload(model_dir)]
    head = api.model_info(repo_id, revision=revision).sha
    if local:  # pin them to the commit that uploads the weights they evaluated
        head = api.create_commit(repo_id, operations=files, revision=revision, parent_commit=head,
                                 commit_message=message).oid
        files, message = [], "Model card and evaluation results (robust-hub)"
    card = card_operations(api, repo_id, model_dir, config, head, local, leaderboard, evidence)
    return api.create_commit(repo_id, operations=files + card, revision=revision, parent_commit=head,
                             commit_message=message).oid


def _one_line(error: Exception) -> str:
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    message = getattr(error, "server_message", None) or str(error).strip().splitlines()[0]
    if status == 401:
        return f"401 not authorized ({message}); log in with `hf auth login` or set HF_TOKEN"
    return f"{status} {message}" if status else message


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="a saved robust-hub model directory (config.json + model.safetensors)")
    parser.add_argument("repo_id", help="Hub repo id, org/name (created if it does not exist)")
    parser.add_argument("--revision", default=None, metavar="BRANCH", help="branch to commit to (default: main)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--results", action="append", default=[], metavar="DIR_OR_STORE",
                        help="put these results in the card: a `robust-hub eval --out` directory (records of these "
                             "weights) or a leaderboard store (its verified results for this repo); repeatable")
    parser.add_argument("--key-file", default=None, help="the leaderboard's key, to verify a store's results "
                        "(default $ROBUST_HUB_LEADERBOARD_KEY, else ~/.config/robust-hub/leaderboard.key)")


def run_push_command(args: argparse.Namespace) -> int:
    from huggingface_hub import constants

    sha = push_to_hub(args.model_dir, args.repo_id, revision=args.revision, private=args.private,
                      commit_message=args.message, results=args.results, key_file=args.key_file)
    print(f"pushed {args.model_dir} to {constants.ENDPOINT}/{args.repo_id}/commit/{sha}")
    print(sha)
    return 0
