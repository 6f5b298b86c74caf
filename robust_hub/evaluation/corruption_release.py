"""The official CIFAR-10-C and CIFAR-100-C (Hendrycks & Dietterich, ICLR 2019), as everyone else gets them.

On first use the release archive is downloaded from its Zenodo record, checked against the MD5 that Zenodo
publishes for it, and its ``.npy`` files are unpacked into the cache (``<cache>/corruptions/CIFAR-10-C``); later
uses read the cache. An interrupted download keeps its ``.part`` file and the next run resumes it (HTTP range
request); a download whose checksum differs is deleted and reported. Nothing unverified is ever unpacked.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from robust_hub.errors import RobustHubError
from robust_hub.cache import cache_home

log = logging.getLogger(__name__)
VERIFIED_MARKER = "verified.json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Release:
    name: str  # the archive's top folder and the cache folder, e.g. CIFAR-10-C
    url: str
    md5: str  # as published on the Zenodo record
    record: str


# Zenodo records 2535967 (CIFAR-10-C) and 3555552 (CIFAR-100-C), version 1; the MD5s are the ones Zenodo lists.
RELEASES = {
    "cifar10": Release("CIFAR-10-C", "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1",
                       "56bf5dcef84df0e2308c6dcbcbbd8499", "https://zenodo.org/records/2535967"),
    "cifar100": Release("CIFAR-100-C", "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar?download=1",
                        "11f0ed0f1191edbf9fa23466ae6021d3", "https://zenodo.org/records/3555552"),
}


def release_for(dataset: str) -> Release:
    """The official corruption set of ``dataset`` (cifar10 or cifar100), or an error naming the alternatives."""
    if dataset not in RELEASES:
        raise RobustHubError(f"there is no official corruption set for {dataset!r} (only for "
                             f"{' and '.join(RELEASES)}); give --c10c-dir DIR or --c10c-generate")
    return RELEASES[dataset]


def official_corruptions(dataset: str, cache_dir: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """The directory of ``dataset``'s official corruption files, downloaded and verified on first use."""
    release = release_for(dataset)
    root = Path(cache_dir).expanduser() if cache_dir else cache_home() / "corruptions"
    final = root / release.name
    if (final / VERIFIED_MARKER).is_file():
        return final
    if final.exists():
        raise RobustHubError(f"{final} exists but was not written by robust-hub's verified download; "
                             "move it away (or pass it as --c10c-dir)")
    root.mkdir(parents=True, exist_ok=True)
    part = root / f"{release.name}.tar.part"
    log.info("downloading %s (about 2.9 GB, once) from %s to %s", release.name, release.record, root)
    _download(release.url, part, progress)
    digest = _md5(part)
    if digest != release.md5:
        part.unlink()
        raise RobustHubError(f"the downloaded {release.name}.tar has MD5 {digest}, not the {release.md5} published "
                             f"at {release.record}; the download was deleted, run again to retry")
    _unpack(part, final, release, digest)
    part.unlink()
    log.info("%s verified (MD5 %s) and cached at %s", release.name, digest, final)
    return final


def _download(url: str, part: Path, progress: bool) -> None:
    """Fetch ``url`` into ``part``, resuming what an earlier run left there; an error if the transfer stops short."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    done, total = have, None
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            resumed = bool(have) and response.status == 206  # else the server sent the whole file again
            done = have if resumed else 0
            total = _expected_size(response, done)
            with open(part, "ab" if resumed else "wb") as out, \
                    tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=part.name, disable=not progress) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the range starts at the end: the .part is already whole
            return
        raise RobustHubError(f"cannot download {url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or type(error).__name__
        raise RobustHubError(f"download of {url} stopped after {done} bytes ({reason}); {part} keeps what "
                             "arrived, run again to resume") from None
    if total is not None and done < total:
        raise RobustHubError(f"download of {url} stopped at {done} of {total} bytes; {part} keeps what arrived, "
                             "run again to resume")


def _expected_size(response, offset: int) -> int | None:
    length = response.headers.get("Content-Length")
    return None if length is None else offset + int(length)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _unpack(archive: Path, final: Path, release: Release, digest: str) -> None:
    """Unpack the verified archive's ``<name>/*.npy`` files (plain files only: no links, no other paths)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{release.name}.", suffix=".tmp", dir=final.parent))
    try:
        names = []
        with tarfile.open(archive) as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                if member.isfile() and path.suffix == ".npy" and path.parent == PurePosixPath(release.name):
                    with tar.extractfile(member) as source, open(staging / path.name, "wb") as target:
                        shutil.copyfileobj(source, target, CHUNK)
                    names.append(path.name)
        if "labels.npy" not in names:
            raise RobustHubError(f"{release.name}.tar (MD5 {digest}) holds no {release.name}/labels.npy")
        (staging / VERIFIED_MARKER).write_text(json.dumps({"release": release.name, "url": release.url,
                                                           "md5": digest, "files": sorted(names)}))
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
