"""Share a saved backbone on the Hugging Face Hub: ``push_to_hub`` and the ``robust-hub push`` command.

The directory is checked first (config.json, safetensors weights that are finite and match the config), so a
broken model never reaches the Hub. Pickled weights are never uploaded. Errors from the Hub (no such repo, no
permission, Hub unreachable, offline mode) become one-line ``RobustHubError``s.
"""

from __future__ import annotations

import argparse
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


def push_to_hub(model_dir: str | Path, repo_id: str, *, revision: str | None = None, private: bool = False,
                commit_message: str | None = None, token: str | None = None) -> str:
    """Upload a saved robust-hub model directory to ``repo_id`` (created if needed); return the commit sha.

    ``revision`` is a branch, created from ``main`` when it does not exist yet. ``token`` defaults to the usual
    huggingface_hub token (``HF_TOKEN`` or ``hf auth login``).
    """
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".")) or repo_id.endswith("/"):
        raise RobustHubError(f"{repo_id!r} is not a Hub repo id of the form 'org/name'")
    config = validate_model_dir(model_dir)

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import httpx

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            folder_path=str(model_dir), repo_id=repo_id, repo_type="model", revision=revision,
            commit_message=commit_message or f"Upload {config['architecture']} with robust-hub",
            ignore_patterns=PICKLE_PATTERNS,
        )
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
    return info.oid


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


def run_push_command(args: argparse.Namespace) -> int:
    from huggingface_hub import constants

    sha = push_to_hub(args.model_dir, args.repo_id, revision=args.revision, private=args.private,
                      commit_message=args.message)
    print(f"pushed {args.model_dir} to {constants.ENDPOINT}/{args.repo_id}/commit/{sha}")
    print(sha)
    return 0
