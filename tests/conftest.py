import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-CPU machine they cost ~100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cifar10_dir() -> Path:
    if not (SHARED_CIFAR10 / "test-00000-of-00001.parquet").is_file():
        pytest.skip(f"CIFAR-10 parquet copy not found at {SHARED_CIFAR10}")
    return SHARED_CIFAR10


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running local Hub stand-in (tests/hub_stand_in.py) that huggingface_hub, timm and transformers talk to.

    huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME and HF_HUB_CACHE into ``huggingface_hub.constants``
    when it is imported (and the module-level ``huggingface_hub.api`` keeps the endpoint it was built with), so
    besides the environment (for subprocesses) the constants are patched too. The cache is a fresh temporary one,
    the token is a fake one the stand-in accepts, and the real cache is never touched.
    """
    from huggingface_hub import constants, hf_api

    from hub_stand_in import HubStandIn

    server = HubStandIn().start()
    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    environment = {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
                   "HF_HOME": str(home), "HF_HUB_CACHE": str(cache), "HF_TOKEN": "hf_test",
                   "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    # Every path constant derived from the real HF_HOME moves under the temporary one (token, xet cache, ...).
    old_home = constants.HF_HOME
    for name in dir(constants):
        value = getattr(constants, name)
        if name.isupper() and isinstance(value, str) and value.startswith(old_home) and value != old_home:
            monkeypatch.setattr(constants, name, str(home) + value[len(old_home):])
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf_api.api, "endpoint", server.url)
    yield server
    server.stop()


@pytest.fixture(params=["local", "hub"])
def store(request, tmp_path):
    """A leaderboard store of each kind: a local directory, and a Hub dataset on the stand-in Hub."""
    from robust_hub.leaderboard.store import HubStore, LocalStore

    if request.param == "local":
        return LocalStore(tmp_path / "store")
    request.getfixturevalue("hub")
    return HubStore("board/store")
