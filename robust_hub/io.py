"""Safe writes: readers never see half-written outputs, and nothing robust-hub did not write is lost.

Every directory robust-hub owns (a saved model, a run's output directory, an eval ``--out``) holds a
small marker file, ``.robust-hub``, naming its kind and the top-level names robust-hub wrote there.
:func:`claim_directory` is the one ownership check every writer goes through: an existing non-empty
target that is not a robust-hub artefact is an error unless the user passed ``overwrite``.

:func:`atomic_directory` stages a whole directory under a temporary sibling name and then
- moves it into place when the target is absent or empty;
- swaps it with a previous robust-hub artefact, whose files stay until the new one is complete;
  files a user added to the old artefact are hard-linked into the new one first, so they survive;
- with ``overwrite`` into a directory robust-hub does not own, moves its files in by name: only the
  names robust-hub writes are replaced, every other file stays.
Staging directories a killed run left behind are removed (or, for an interrupted swap, restored) by
the next write to the same target, but only those robust-hub can prove it made: a staging directory
carries a marker whose ``staged_as`` is its own name from the moment it is created. A user's folder
that merely looks like staging (``.model.tmp-notes``) is never touched. robust-hub never writes through
a symbolic link it finds where it writes (:func:`refuse_link`). Files and directories get the user's
umask, not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from robust_hub.errors import RobustHubError

MARKER = ".robust-hub"


def current_umask() -> int:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


def _default_mode(directory: bool) -> int:
    return (0o777 if directory else 0o666) & ~current_umask()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """``data`` written under a temporary name beside ``path``, then renamed over it."""
    path = Path(path)
    check_writable_path(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.is_file() else _default_mode(directory=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600; a replaced file keeps its mode, a new one follows the umask
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_exclusive(path: str | os.PathLike, data: bytes) -> bool:
    """``data`` at ``path`` unless something is there already (then False, and nothing changes): written under a
    temporary name and linked into place, so the file appears whole and never replaces another."""
    path = Path(path)
    refuse_link(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, _default_mode(directory=False))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def write_json_atomic(path: str | os.PathLike, data: Any, sort_keys: bool = False) -> None:
    """JSON with NaN/Infinity refused: they are not JSON, and a result holding one is a bug."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys, allow_nan=False, default=str) + "\n")


# ------------------------------------------------------------------------------------------ ownership
def check_writable_path(path: str | os.PathLike) -> None:
    """Refuse a directory path that is a file or lies under one (one clear error instead of ENOTDIR)."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                where = "is a file" if part == path else f"lies under the file {part}"
                raise RobustHubError(f"{path} {where}; give a directory path")
            return


def read_marker(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The marker of a robust-hub artefact, or None when ``directory`` is not one."""
    path = Path(directory) / MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("written_by") == "robust-hub" else None


def _legacy_kind(directory: Path) -> str | None:
    """Layouts robust-hub wrote before it marked its directories."""
    config = directory / "config.json"
    with contextlib.suppress(OSError, ValueError):
        if config.is_file() and "robust_hub" in json.loads(config.read_text(encoding="utf-8")):
            return "model"
    if (directory / "run_config.yaml").is_file() and (directory / "environment.json").is_file():
        return "run"
    entries = list(directory.iterdir()) if directory.is_dir() else []
    if (directory / "state").is_dir() and all(p.name == "state" or p.suffix == ".json" for p in entries):
        return "eval-results"  # records and resumable state of `robust-hub eval`
    return None


def artefact_kind(directory: str | os.PathLike) -> str | None:
    directory = Path(directory)
    marker = read_marker(directory)
    return str(marker.get("kind")) if marker else _legacy_kind(directory)


def owned_names(directory: Path) -> set[str]:
    """Top-level names robust-hub wrote in ``directory`` (for an unmarked legacy model, its usual files)."""
    marker = read_marker(directory)
    if marker:
        return {MARKER, *marker.get("files", [])}
    return {MARKER, "config.json", "preprocessor_config.json", "model.safetensors", "README.md", "training_loss.png"}


def write_marker(directory: str | os.PathLike, kind: str, files: list[str] | None = None, **extra: Any) -> None:
    directory = Path(directory)
    names = sorted(set(files if files is not None else [p.name for p in directory.iterdir() if p.name != MARKER]))
    write_json_atomic(directory / MARKER, {"written_by": "robust-hub", "kind": kind, "files": names, **extra})


def refuse_link(path: str | os.PathLike) -> None:
    """robust-hub writes into what it finds at ``path`` only if that is not a symbolic link (to anywhere)."""
    if Path(path).is_symlink():
        raise RobustHubError(f"{path} is a symbolic link; robust-hub does not write through links (remove it)")


def owned_subdirectory(parent: str | os.PathLike, name: str) -> Path:
    """``parent/name`` as a real directory robust-hub may write into: created when absent, never a link."""
    path = Path(parent) / name
    refuse_link(path)
    check_writable_path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def claim_directory(target: str | os.PathLike, kind: str, *, overwrite: bool = False, what: str = "output",
                    writes: tuple[str, ...] = ()) -> bool:
    """Check that robust-hub may write a ``kind`` artefact at ``target``; True when it exists and is foreign.

    The one rule for every writer: a file, or a path under a file, is always refused; an existing
    non-empty directory is refused unless it is a robust-hub artefact of the same ``kind`` or
    ``overwrite`` is set. ``writes`` names entries the writer will write into (``state`` of an eval
    ``--out``); a symbolic link at any of them is refused, ``overwrite`` or not.
    """
    target = Path(target)
    check_writable_path(target)
    for name in writes:
        refuse_link(target / name)
    if not target.is_dir() or not any(p for p in target.iterdir() if not _is_staging_of_child(p)):
        return False
    found = artefact_kind(target)
    if found == kind:
        return False
    if overwrite:
        return True
    described = f"a robust-hub {found} directory" if found else "not written by robust-hub"
    raise RobustHubError(f"{what} {target} already exists, is not empty and is {described}; choose another path "
                         f"or pass --overwrite (robust-hub then replaces only the files it writes)")


def _is_staging_of_child(path: Path) -> bool:
    return path.name.startswith(".") and (".tmp-" in path.name or ".old-" in path.name) and is_our_staging(path)


def is_our_staging(path: Path) -> bool:
    """A staging directory robust-hub made: a real directory whose marker names it (see :func:`_make_staging`)."""
    if path.is_symlink() or not path.is_dir():
        return False
    marker = read_marker(path)
    return marker is not None and marker.get("staged_as") == path.name


# ------------------------------------------------------------------------------------------ staging
def _staging_prefix(target: Path, role: str) -> str:
    return f".{target.name}.{role}-"


def _pid_alive(name: str, prefix: str) -> bool:
    """Staging names carry the writer's pid; a name without one (older versions) counts as dead."""
    pid = name[len(prefix):].split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return int(pid) != 0


def clean_stale_staging(target: Path) -> None:
    """Remove what a killed writer of ``target`` left; restore ``target`` if a swap was cut in half."""
    parent = target.parent
    if not parent.is_dir():
        return
    for role in ("old", "tmp"):
        prefix = _staging_prefix(target, role)
        for stale in sorted(parent.glob(prefix + "*")):
            if not is_our_staging(stale) or _pid_alive(stale.name, prefix):
                continue
            if role == "old" and (stale / "old").is_dir() and not target.exists():
                os.replace(stale / "old", target)  # killed between the two renames of a swap
            shutil.rmtree(stale, ignore_errors=True)


def _make_staging(target: Path, role: str) -> Path:
    """A new staging directory, marked at once so that a later clean-up can tell it from a user's folder."""
    staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(target, role)}{os.getpid()}-", dir=target.parent))
    os.chmod(staging, _default_mode(directory=True))  # mkdtemp makes 0700
    write_marker(staging, "staging", files=[], staged_as=staging.name)
    return staging


def _link_tree(source: Path, destination: Path) -> None:
    """Hard links where the file system allows them (instant, no extra space), copies otherwise."""
    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, destination, symlinks=True, copy_function=link_or_copy)
    else:
        link_or_copy(str(source), str(destination))


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, kind: str = "model", *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging directory that becomes ``target`` (a ``kind`` artefact) only if the block succeeds."""
    target = Path(os.path.abspath(target))
    foreign = claim_directory(target, kind, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(target)
    staging = _make_staging(target, "tmp")
    try:
        yield staging
        write_marker(staging, kind, staged_as=staging.name)  # still provably staging if killed before the move
        _apply_umask(staging)
        if foreign or (target.is_dir() and not any(target.iterdir())):
            _move_in_by_name(staging, target)
        elif target.exists():
            _swap(staging, target)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _apply_umask(staging: Path) -> None:
    """Libraries write through temporary files too (safetensors: 0600); everything gets the umask."""
    file_mode, dir_mode = _default_mode(directory=False), _default_mode(directory=True)
    for root, dirs, files in os.walk(staging):
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), file_mode)


def _move_in_by_name(staging: Path, target: Path) -> None:
    """Every name is checked before the first move, so a refusal leaves ``target`` as it was."""
    items = sorted(staging.iterdir(), key=lambda p: p.name == MARKER)  # the marker last
    for item in items:
        destination = target / item.name
        if destination.is_dir() and not destination.is_symlink():
            raise RobustHubError(f"{destination} is a directory; robust-hub will not replace it with a file")
    for item in items:
        os.replace(item, target / item.name)


def _swap(staging: Path, target: Path) -> None:
    """Replace an earlier artefact: keep the files a user added to it, drop only robust-hub's own."""
    ours = owned_names(target) | {p.name for p in staging.iterdir()}
    for item in target.iterdir():
        if item.name not in ours:
            _link_tree(item, staging / item.name)
    retired = _make_staging(target, "old")
    os.replace(target, retired / "old")
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)
