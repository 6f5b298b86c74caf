"""The official CIFAR-10-C download against a local HTTP server (loopback only): first use, cache, a checksum
failure, a half-finished download resumed, and an archive with paths and links that must not be unpacked."""

import hashlib
import http.server
import io
import tarfile
import threading

import numpy as np
import pytest
import torch
from torch import nn

from robust_hub.errors import RobustHubError
from robust_hub.evaluation import corruption_release, runner
from robust_hub.evaluation.corruption_release import VERIFIED_MARKER, Release, official_corruptions
from robust_hub.evaluation.corruptions import CIFAR10C_CORRUPTIONS, load_cifar10c
from robust_hub.evaluation.protocols import Classifier

N = 4  # images per severity


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def _release_arrays(names=("fog", "snow")):
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(N) % 10, 5).astype(np.int64)
    return labels, {name: rng.integers(0, 256, (5 * N, 32, 32, 3), dtype=np.uint8) for name in names}


def _archive(names=("fog", "snow")) -> bytes:
    labels, images = _release_arrays(names)
    return _tar({"CIFAR-10-C/labels.npy": _npy(labels), **{f"CIFAR-10-C/{n}.npy": _npy(a) for n, a in images.items()}})


class Server:
    """Serves ``body`` at /CIFAR-10-C.tar with Range support; ``cut_after`` ends the first response early."""

    def __init__(self, body: bytes, cut_after: int | None = None):
        self.body, self.cut_after, self.requests = body, cut_after, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.headers.get("Range"))
                start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(outer.body) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.body) - 1}/{len(outer.body)}")
                self.end_headers()
                end = len(outer.body)
                if outer.cut_after is not None:
                    end, outer.cut_after = outer.cut_after, None
                self.wfile.write(outer.body[start:end])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/CIFAR-10-C.tar"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(monkeypatch):
    servers = []

    def start(body: bytes, md5: str, cut_after: int | None = None) -> Server:
        server = Server(body, cut_after)
        servers.append(server)
        monkeypatch.setitem(corruption_release.RELEASES, "cifar10", Release("CIFAR-10-C", server.url, md5, "test record"))
        return server

    yield start
    for server in servers:
        server.close()


def test_first_use_downloads_verifies_and_caches_then_reads_the_cache(tmp_path, serve, monkeypatch):
    archive = _archive()
    server = serve(archive, hashlib.md5(archive).hexdigest())
    monkeypatch.setenv("ROBUST_HUB_CACHE", str(tmp_path / "cache"))
    root = official_corruptions("cifar10", progress=False)
    assert root == tmp_path / "cache" / "corruptions" / "CIFAR-10-C"
    assert sorted(p.name for p in root.iterdir()) == ["fog.npy", "labels.npy", "snow.npy", VERIFIED_MARKER]
    assert sorted(p.name for p in root.parent.iterdir()) == ["CIFAR-10-C"]  # no archive or .part left
    labels, images = _release_arrays()
    cset = load_cifar10c(root, corruptions=("fog", "snow"))
    assert torch.equal(cset.labels, torch.from_numpy(labels[:N]))
    assert torch.equal(cset.images["snow"][3], torch.from_numpy(images["snow"][2 * N:3 * N]).permute(0, 3, 1, 2))
    assert official_corruptions("cifar10", progress=False) == root and len(server.requests) == 1  # cached


def test_a_checksum_mismatch_deletes_the_download_and_unpacks_nothing(tmp_path, serve):
    archive = _archive()
    serve(archive, hashlib.md5(archive + b"x").hexdigest())
    with pytest.raises(RobustHubError, match=f"has MD5 {hashlib.md5(archive).hexdigest()}, not the"):
        official_corruptions("cifar10", tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_half_finished_download_is_kept_and_resumed(tmp_path, serve):
    archive = _archive()
    server = serve(archive, hashlib.md5(archive).hexdigest(), cut_after=len(archive) // 3)
    with pytest.raises(RobustHubError, match=f"stopped at {len(archive) // 3} of {len(archive)} bytes.*run again"):
        official_corruptions("cifar10", tmp_path, progress=False)
    part = tmp_path / "CIFAR-10-C.tar.part"
    assert part.read_bytes() == archive[:len(archive) // 3] and not (tmp_path / "CIFAR-10-C").exists()
    root = official_corruptions("cifar10", tmp_path, progress=False)
    assert server.requests == [None, f"bytes={len(archive) // 3}-"]  # the second request asked for the rest only
    assert (root / VERIFIED_MARKER).is_file() and not part.exists()


def test_only_the_release_npy_files_are_unpacked(tmp_path, serve):
    archive = _tar({"CIFAR-10-C/labels.npy": _npy(np.zeros(5, np.int64)), "CIFAR-10-C/../../evil.npy": b"x",
                    "elsewhere/fog.npy": b"x", "CIFAR-10-C/README.txt": b"x"}, links={"CIFAR-10-C/snow.npy": "/etc/passwd"})
    serve(archive, hashlib.md5(archive).hexdigest())
    root = official_corruptions("cifar10", tmp_path / "cache", progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["labels.npy", VERIFIED_MARKER]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["CIFAR-10-C", "cache", "labels.npy", VERIFIED_MARKER]


def test_eval_uses_the_official_set_for_cifar_names_and_refuses_other_datasets(tmp_path, serve, monkeypatch):
    assert runner._official_corruption_key("CIFAR10") == "cifar10"
    assert runner._official_corruption_key("uoft-cs/cifar100") == "cifar100"
    with pytest.raises(RobustHubError, match="no official corruption set for 'embedded:digits'.*--c10c-dir"):
        runner._official_corruption_key("embedded:digits")

    archive = _archive(CIFAR10C_CORRUPTIONS)
    serve(archive, hashlib.md5(archive).hexdigest())
    monkeypatch.setenv("ROBUST_HUB_CACHE", str(tmp_path))
    classifier = Classifier(nn.Flatten(), 3 * 32 * 32, 10)
    opts = runner.EvalOptions(("c10c",), "linf", 8 / 255, 0, None, None, None, (), "pgd20", None, False, None,
                              "standard", 1000, 8, torch.device("cpu"), False, c10c_official="cifar10")
    result, _ = runner._c10c(classifier, None, opts)  # the summary, and which images each batch got right
    assert result["generated"] is False and set(result["per_corruption"]) == set(CIFAR10C_CORRUPTIONS)
    assert result["source"] == str((tmp_path / "corruptions" / "CIFAR-10-C").resolve())


def test_the_cache_follows_robust_hub_cache_then_hf_home_then_xdg(tmp_path, monkeypatch):
    from robust_hub.cache import cache_home
    from robust_hub.data import datasets

    for name in ("ROBUST_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_home() == tmp_path / "home" / ".cache" / "robust_hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_home() == tmp_path / "xdg" / "robust_hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert cache_home() == tmp_path / "hf" / "robust_hub"
    monkeypatch.setenv("ROBUST_HUB_CACHE", str(tmp_path / "mine"))
    assert cache_home() == tmp_path / "mine"
    assert datasets._cache_root(None) == tmp_path / "mine" / "datasets"  # decoded images live under the same root
