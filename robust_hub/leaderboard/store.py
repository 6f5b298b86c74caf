"""Where the leaderboard keeps its files: a local directory or a Hub dataset repository, behind one interface.

Everything the leaderboard writes is a new file that never changes afterwards (requests are append-only event
logs, results are one file each), so the one write primitive is ``create``: write ``path`` only if it does not
exist yet, atomically. Two writers racing for the same path: exactly one wins, the other is told so.

- :class:`LocalStore`: the bytes go to a temporary file in the same directory, which is then hard-linked to the
  final name (``link`` fails when the name exists, and a reader sees the whole file or nothing).
- :class:`HubStore`: a commit whose ``parent_commit`` is the head that was checked for the path; the Hub refuses
  it (412) when another commit landed in between, and the check is redone on the new head (compare-and-swap).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Protocol

from robust_hub.errors import RobustHubError

HUB_PREFIX = "hf://datasets/"
SAFE_PATH = re.compile(r"^[A-Za-z0-9_.@=+-]+(/[A-Za-z0-9_.@=+-]+)*$")


def check_path(path: str) -> str:
    """Store paths are relative, plain and never climb out of the store."""
    if not SAFE_PATH.fullmatch(path) or any(part in (".", "..") for part in path.split("/")):
        raise RobustHubError(f"invalid store path {path!r}")
    return path


class Store(Protocol):
    location: str

    def list(self, prefix: str) -> list[str]:
        """Every file path under ``prefix`` (a folder), sorted."""

    def read(self, path: str) -> bytes:
        """The bytes of ``path``; RobustHubError when it does not exist."""

    def local_path(self, path: str) -> Path:
        """A local regular file holding ``path``'s bytes, reached without following a link."""

    def create(self, path: str, data: bytes, message: str = "") -> bool:
        """Write ``path`` if it does not exist; False (and nothing written) when it does."""



class LocalStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.location = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise RobustHubError(f"leaderboard store {self.root} is a file, not a directory")

    def list(self, prefix: str) -> list[str]:
        base = self.root / check_path(prefix)
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    def read(self, path: str) -> bytes:
        return self.local_path(path).read_bytes()

    def local_path(self, path: str) -> Path:
        """``path`` under the root, refused when it or any folder on the way is a link (it could lead anywhere)."""
        target = self.root
        for part in check_path(path).split("/"):
            target = target / part
            try:
                mode = os.lstat(target).st_mode
            except (FileNotFoundError, NotADirectoryError):  # absent, or a file where a folder should be
                raise RobustHubError(f"{path} is not in the store {self.location}") from None
            if stat.S_ISLNK(mode):
                raise RobustHubError(f"{path} in the store {self.location} goes through a link; links are not followed")
        if not stat.S_ISREG(mode):
            raise RobustHubError(f"{path} in the store {self.location} is not a regular file")
        return target

    def _staged(self, target: Path, data: bytes) -> str:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        return tmp

    def create(self, path: str, data: bytes, message: str = "") -> bool:
        target = self.root / check_path(path)
        tmp = self._staged(target, data)
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)



class HubStore:
    """A dataset repository on the Hub (or anything speaking its API, such as the tests' stand-in)."""

    def __init__(self, repo_id: str, *, token: str | None = None, create: bool = True, max_tries: int = 50):
        from huggingface_hub import HfApi

        self.repo_id, self.max_tries = repo_id, max_tries
        self.location = HUB_PREFIX + repo_id
        self.api = HfApi(token=token)
        if create:
            with _hub_errors(repo_id):
                self.api.create_repo(repo_id, repo_type="dataset", exist_ok=True)

    def _head(self) -> tuple[str, set[str]]:
        with _hub_errors(self.repo_id):
            info = self.api.dataset_info(self.repo_id)
        return info.sha, {s.rfilename for s in info.siblings or []}

    def list(self, prefix: str) -> list[str]:
        folder = check_path(prefix).rstrip("/") + "/"
        return sorted(p for p in self._head()[1] if p.startswith(folder))

    def read(self, path: str) -> bytes:
        return self.local_path(path).read_bytes()

    def local_path(self, path: str) -> Path:
        """The downloaded file itself: the Hub cache's snapshot entry is a link to it, made by huggingface_hub."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            with _hub_errors(self.repo_id):
                return Path(hf_hub_download(self.repo_id, check_path(path), repo_type="dataset",
                                            token=self.api.token)).resolve()
        except EntryNotFoundError:
            raise RobustHubError(f"{path} is not in the store {self.location}") from None

    def _commit(self, path: str, data: bytes, message: str, parent: str) -> str:
        from huggingface_hub import CommitOperationAdd

        return self.api.create_commit(self.repo_id, repo_type="dataset", parent_commit=parent,
                               operations=[CommitOperationAdd(path_in_repo=path, path_or_fileobj=data)],
                               commit_message=message or f"leaderboard: add {path}").oid

    def create(self, path: str, data: bytes, message: str = "") -> bool:
        from huggingface_hub.errors import HfHubHTTPError

        check_path(path)
        for attempt in range(self.max_tries):
            head, files = self._head()
            if path in files:
                return False
            try:
                with _hub_errors(self.repo_id, passthrough=412):
                    landed = self._commit(path, data, message, parent=head)
                # huggingface_hub skips a commit that changes nothing (the same bytes already landed there):
                # then someone else wrote the file, not us
                return landed != head
            except HfHubHTTPError:  # 412: another commit landed since `head`; look again
                time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
        raise RobustHubError(f"could not write {path} to {self.location}: the repository kept changing "
                             f"({self.max_tries} tries)")



@contextlib.contextmanager
def _hub_errors(repo_id: str, passthrough: int | None = None, what: str = "the store"):
    """Hub errors as one RobustHubError line naming ``what`` (``the store``, ``the Space``) and ``repo_id``."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError
    from huggingface_hub.utils import httpx

    try:
        yield
    except OfflineModeIsEnabled:
        raise RobustHubError(f"{what} {repo_id!r} is on the Hub and HF_HUB_OFFLINE is set") from None
    except RepositoryNotFoundError:
        raise RobustHubError(f"{what} {repo_id!r} does not exist or this token cannot see it") from None
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status is not None and status == passthrough:
            raise
        raise RobustHubError(f"{what} {repo_id!r} on the Hub answered {status}: "
                             f"{str(error).strip().splitlines()[0]}") from None
    except httpx.HTTPError as error:
        raise RobustHubError(f"the Hub holding {what} {repo_id!r} cannot be reached ({type(error).__name__})") from None


def open_store(location: str) -> Store:
    """``hf://datasets/ORG/NAME`` is a Hub dataset repository; anything else is a local directory."""
    if location.startswith(HUB_PREFIX):
        repo_id = location[len(HUB_PREFIX):].strip("/")
        if repo_id.count("/") != 1:
            raise RobustHubError(f"{location!r}: a Hub store is hf://datasets/ORG/NAME")
        return HubStore(repo_id)
    if location.startswith("hf://"):
        raise RobustHubError(f"{location!r}: only dataset repositories can hold a store (hf://datasets/ORG/NAME)")
    return LocalStore(location)
