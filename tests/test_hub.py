"""Sharing on the Hub, end to end against a local stand-in that speaks the Hub's HTTP API (tests/hub_stand_in.py).

Nothing here is mocked: the real huggingface_hub client (and timm's and transformers' Hub code through it) makes
real HTTP requests to the stand-in on 127.0.0.1; see the ``hub`` fixture in conftest.py.
"""

import pytest
import timm
import torch
from huggingface_hub import HfApi, constants
from transformers import AutoModel

import robust_hub
from helpers import with_distinct_bn_statistics
from robust_hub import RobustHubError
from robust_hub.cli import main
from robust_hub.hub_push import push_to_hub

from hub_stand_in import closed_port_url

X = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(seed):
    """A tiny backbone with seeded weights and distinct BN statistics."""
    torch.manual_seed(seed)
    return with_distinct_bn_statistics(robust_hub.create_backbone("robust_resnet_tiny"), seed)


def saved(model, path):
    model.save_pretrained(path)
    return path


def outputs(model):
    with torch.no_grad():
        return model.eval()(X)


def test_pushed_model_loads_back_with_identical_outputs(hub, tmp_path):
    model = tiny_model(1)
    sha = push_to_hub(saved(model, tmp_path / "m"), "org/tiny")

    assert len(sha) == 40 and hub.get_repo("org/tiny").branches["main"] == sha
    info = HfApi().model_info("org/tiny", revision=sha)
    assert info.sha == sha
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {s.rfilename for s in info.siblings}
    assert torch.equal(outputs(robust_hub.from_pretrained("org/tiny")), outputs(model))


def test_revisions_keep_earlier_pushes_loadable(hub, tmp_path):
    first, second = tiny_model(1), tiny_model(2)
    assert not torch.equal(outputs(first), outputs(second))
    sha1 = push_to_hub(saved(first, tmp_path / "first"), "org/tiny")
    sha2 = push_to_hub(saved(second, tmp_path / "second"), "org/tiny", commit_message="second model")

    assert sha1 != sha2
    assert hub.get_repo("org/tiny").commits[sha2].parent == sha1
    assert torch.equal(outputs(robust_hub.from_pretrained("org/tiny", revision=sha1)), outputs(first))
    assert torch.equal(outputs(robust_hub.from_pretrained("org/tiny")), outputs(second))

    # a branch: created on first use, main is left alone
    sha3 = push_to_hub(saved(first, tmp_path / "first"), "org/tiny", revision="dev")
    assert hub.get_repo("org/tiny").branches == {"main": sha2, "dev": sha3}
    assert torch.equal(outputs(robust_hub.from_pretrained("org/tiny", revision="dev")), outputs(first))
    assert torch.equal(outputs(robust_hub.from_pretrained("org/tiny", revision="main")), outputs(second))


def test_timm_and_transformers_load_the_pushed_model(hub, tmp_path, monkeypatch):
    model = tiny_model(3)
    push_to_hub(saved(model, tmp_path / "m"), "org/tiny")
    expected = outputs(model)

    def weights_downloads():
        return sum(1 for method, path, _ in hub.requests if method == "GET" and path.endswith("/model.safetensors"))

    via_timm = timm.create_model("hf-hub:org/tiny", pretrained=True)
    assert weights_downloads() == 1
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "second_cache"))  # transformers downloads too
    with torch.no_grad():
        via_transformers = AutoModel.from_pretrained("org/tiny").eval()(pixel_values=X).pooler_output
    assert weights_downloads() == 2
    assert torch.equal(outputs(via_timm), expected)
    assert torch.allclose(via_transformers, expected, atol=1e-6)


def test_missing_repo_revision_and_unreachable_hub_are_clear_errors(hub, tmp_path, monkeypatch):
    push_to_hub(saved(tiny_model(1), tmp_path / "m"), "org/tiny")

    try:
        robust_hub.from_pretrained("org/nope")
    except RobustHubError as error:
        assert "'org/nope' does not exist" in str(error) and "\n" not in str(error)
    else:
        raise AssertionError("a missing repo must raise RobustHubError")

    try:
        robust_hub.from_pretrained("org/tiny", revision="no-such-branch")
    except RobustHubError as error:
        assert "no revision 'no-such-branch'" in str(error) and "\n" not in str(error)
    else:
        raise AssertionError("a missing revision must raise RobustHubError")

    down = closed_port_url()
    monkeypatch.setattr(constants, "ENDPOINT", down)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", down + "/{repo_id}/resolve/{revision}/{filename}")
    try:
        robust_hub.from_pretrained("org/tiny")  # never downloaded: the cache cannot stand in
    except RobustHubError as error:
        assert "cannot be reached" in str(error) and "\n" not in str(error)
    else:
        raise AssertionError("an unreachable Hub must raise RobustHubError")
    try:
        push_to_hub(str(tmp_path / "m"), "org/tiny")
    except RobustHubError as error:
        assert "cannot be reached" in str(error) and "\n" not in str(error)
    else:
        raise AssertionError("pushing to an unreachable Hub must raise RobustHubError")


def test_cli_push_refuses_broken_model_dirs_without_touching_the_hub(hub, tmp_path, capsys):
    push_to_hub(saved(tiny_model(1), tmp_path / "good"), "org/tiny")
    commits, requests = hub.commit_count("org/tiny"), len(hub.requests)

    truncated = saved(tiny_model(1), tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    mismatched = saved(tiny_model(1), tmp_path / "mismatched")
    robust_hub.create_backbone("robust_resnet18").save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").replace(mismatched / "config.json")
    no_config = saved(tiny_model(1), tmp_path / "no_config")
    (no_config / "config.json").unlink()

    for broken, why in [(truncated, "corrupt"), (mismatched, "do not match"), (no_config, "no config.json"),
                        (tmp_path / "missing", "does not exist")]:
        capsys.readouterr()
        assert main(["push", str(broken), "org/tiny"]) != 0
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and why in err, err
        assert main(["push", str(broken), "org/new"]) != 0
    assert hub.commit_count("org/tiny") == commits and hub.commit_count("org/new") == 0
    assert len(hub.requests) == requests  # validation fails before any request


def test_cli_push_happy_path(hub, tmp_path, capsys, monkeypatch):
    model = tiny_model(4)
    assert main(["push", str(saved(model, tmp_path / "m")), "org/cli", "--private", "--message", "first"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    repo = hub.get_repo("org/cli")
    sha = repo.branches["main"]
    assert out[-1] == sha and f"{hub.url}/org/cli/commit/{sha}" in out[0]
    assert repo.private and repo.commits[sha].title == "first"
    assert hub.files_at("org/cli")["model.safetensors"] == (tmp_path / "m" / "model.safetensors").read_bytes()

    monkeypatch.delenv("HF_TOKEN")  # private: invisible without a token
    try:
        robust_hub.from_pretrained("org/cli")
    except RobustHubError as error:
        assert "does not exist" in str(error)
    else:
        raise AssertionError("a private repo must not be readable without a token")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    assert torch.equal(outputs(robust_hub.from_pretrained("org/cli")), outputs(model))

    assert main(["push", str(tmp_path / "m"), "org/cli", "--revision", "v2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == repo.branches["v2"]


def test_push_with_a_bad_token_is_a_clear_error(hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert main(["push", str(saved(tiny_model(1), tmp_path / "m")), "org/tiny"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: could not push to 'org/tiny': 401 not authorized") and "\n" not in err, err
    assert hub.commit_count("org/tiny") == 0


def test_push_in_offline_mode_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # conftest's default; no `hub` fixture here
    assert main(["push", str(saved(tiny_model(1), tmp_path / "m")), "org/tiny"]) != 0
    assert capsys.readouterr().err.strip() == "error: cannot push while HF_HUB_OFFLINE is set; unset it to reach the Hub"
