"""Strict loading: every loader uses every stored tensor, initialises nothing at random, and checks the
config against the weights before building anything; a record's hash is that of what was loaded."""

import contextlib
import hashlib
import json
import re
import resource
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import robust_hub
from robust_hub import RobustHubError
from robust_hub.cli import main
from robust_hub.evaluation.loading import load_backbone

from helpers import with_distinct_bn_statistics
from test_eval_loading import save_tiny_timm, save_tiny_vit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MEMORY_CAP = 3 << 30  # far below the 10 GB a 20-million-class head of the tiny ResNet needs


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def saved_tiny(path):
    with_distinct_bn_statistics(robust_hub.create_backbone("robust_resnet_tiny")).save_pretrained(path)
    return path


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def vit_config_over_robust_hub_weights(path, tmp_path):
    """The issue's case: a transformers ViT config.json and preprocessor config over robust-hub safetensors."""
    save_tiny_vit(tmp_path / "vit")
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(tmp_path / "vit" / name, path / name)


MISMATCHES = {
    "vit_config": (vit_config_over_robust_hub_weights, "do not match|names no 'architecture'"),
    "twenty_million_classes": (lambda path, _: edit_config(path, num_classes=20_000_000), r"missing.*head\.weight"),
    "model_args_not_a_mapping": (lambda path, _: edit_config(path, model_args=[1, 2]), "'model_args' must be a JSON object"),
}


@pytest.fixture(params=sorted(MISMATCHES))
def mismatched(request, tmp_path):
    make, why = MISMATCHES[request.param]
    path = saved_tiny(tmp_path / request.param)
    make(path, tmp_path)
    return path, why


@contextlib.contextmanager
def memory_cap(extra=MEMORY_CAP):
    """Let this process allocate at most ``extra`` more bytes meanwhile (a soft limit, raised again after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as status:
        in_use = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (in_use + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def refused(argv, capsys, why):
    """``robust-hub ARGV`` exits 2 with one ``error:`` line matching ``why``, within the memory cap."""
    capsys.readouterr()
    with memory_cap():
        code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err[-2000:]
    assert re.search(why, err), err


def test_a_mismatched_config_is_refused_by_eval_inspect_and_postprocess(mismatched, tmp_path, capsys):
    path, why = mismatched
    refused(["eval", path, "--protocols", "slf", "--dataset", "embedded:digits", "--metrics", "clean",
             "--out", tmp_path / "results", "--device", "cpu", "--no-progress"], capsys, why)
    assert not (tmp_path / "results").exists()  # no record, no state, not even the directory
    refused(["inspect", path], capsys, why)
    refused(["postprocess", path, "--out", tmp_path / "pp", "--dataset", "embedded:digits", "--device", "cpu"],
            capsys, why)
    assert not (tmp_path / "pp").exists()


def test_the_leaderboard_runner_fails_a_mismatched_submission_and_goes_on(hub, tmp_path):
    from huggingface_hub import CommitOperationAdd, HfApi

    from robust_hub.leaderboard.requests import RequestQueue, request_id
    from robust_hub.leaderboard.runner import run_queue, submit
    from robust_hub.leaderboard.store import LocalStore

    from leaderboard_helpers import KEY, fast_settings, push_tiny

    _, good = push_tiny(tmp_path, "org/good")
    bad = {}
    for name, (make, _) in MISMATCHES.items():
        path = saved_tiny(tmp_path / name)
        make(path, tmp_path)
        repo = f"org/{name.replace('_', '-')}"
        HfApi().create_repo(repo)
        files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
        HfApi().create_commit(repo, operations=[CommitOperationAdd(p.name, p.read_bytes()) for p in files],
                              commit_message="up")
        bad[repo] = MISMATCHES[name][1]
    store = LocalStore(tmp_path / "store")
    for repo in [*bad, "org/good"]:
        submit(store, repo)

    summary = run_queue(store, KEY, fast_settings(), tmp_path / "work")
    assert summary.finished == [request_id("org/good", good)]
    assert {rid.split("--")[1] for rid in summary.failed} == {repo.split("/")[1] for repo in bad}
    for rid, reason in summary.failed.items():
        assert re.search(bad["org/" + rid.split("--")[1]], reason), reason
    states = {r.model_id: r.state for r in RequestQueue(store, KEY).all()[0]}  # verified events only
    assert states == {**{repo: "FAILED" for repo in bad}, "org/good": "FINISHED"}
    results = [p for p in (tmp_path / "store").rglob("*.json") if "results" in p.parts]
    assert results and all("org--good--" in str(p) for p in results)  # no record of a mismatched model


# ---------------------------------------------------------------------------------------- every loader
def test_robust_hub_loader_refuses_missing_unexpected_and_reshaped_tensors(tmp_path):
    path = saved_tiny(tmp_path / "m")
    weights = load_file(str(path / "model.safetensors"))
    cases = {
        "missing": ({k: v for k, v in weights.items() if k != "conv1.weight"}, r"missing \(would stay random\): conv1\.weight"),
        "unexpected": ({**weights, "extra.weight": torch.zeros(2)}, r"unexpected \(stored, unused\): extra\.weight"),
        "reshaped": ({**weights, "conv1.weight": torch.zeros(1)}, r"shapes differ: conv1\.weight"),
    }
    for case, (state, why) in cases.items():
        save_file(state, str(path / "model.safetensors"))
        with pytest.raises(RobustHubError, match=why):
            robust_hub.from_pretrained(path)
        with pytest.raises(RobustHubError, match=why):
            load_backbone(path)


def test_timm_loader_uses_the_stored_head_and_refuses_what_does_not_fit(tmp_path):
    ref = save_tiny_timm(tmp_path / "t")  # saved without a classifier
    path = tmp_path / "t"
    config = json.loads((path / "config.json").read_text())
    edit_config(path, num_classes=7, model_args={**config["model_args"], "num_classes": 7})  # a head not stored
    with pytest.raises(RobustHubError, match=r"missing \(would stay random\): fc\.bias, fc\.weight"):
        load_backbone(path)
    edit_config(path, num_classes=0, model_args=config["model_args"])
    save_file({**ref.state_dict(), "fc.weight": torch.zeros(7, ref.num_features)}, str(path / "model.safetensors"))
    with pytest.raises(RobustHubError, match=r"unexpected \(stored, unused\): fc\.weight"):
        load_backbone(path)


def test_transformers_task_checkpoint_loads_every_tensor_and_nothing_random(tmp_path):
    """A ViTForImageClassification checkpoint: AutoModel would build a ViTModel with a random pooler."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, num_labels=3)
    ref = ViTForImageClassification(cfg).eval()
    ref.save_pretrained(tmp_path / "v")
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.25] * 3).save_pretrained(tmp_path / "v")
    bb = load_backbone(tmp_path / "v")
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the encoder's tokens, averaged: ViT's base model without a pooler
        expected = ref.vit(pixel_values=(images - 0.5) / 0.25).last_hidden_state.mean(dim=1)
        assert torch.allclose(bb(images), expected, atol=1e-5)
    loaded = bb.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ref.state_dict().items())
    assert bb.info.weights_sha256 == sha256(tmp_path / "v" / "model.safetensors")


def test_transformers_config_asking_for_more_classes_than_the_weights_hold_is_refused_unbuilt(tmp_path):
    save_tiny_vit(tmp_path / "v")
    config = json.loads((tmp_path / "v" / "config.json").read_text())
    config.pop("id2label", None), config.pop("label2id", None)
    (tmp_path / "v" / "config.json").write_text(json.dumps({**config, "num_labels": 20_000_000}))
    with pytest.raises(RobustHubError, match="asks for 20,000,000 classes"):
        load_backbone(tmp_path / "v")
    (tmp_path / "v" / "config.json").write_text(json.dumps({**config, "architectures": ["ViTForImageClassification"],
                                                             "num_labels": 3}))
    with pytest.raises(RobustHubError, match=r"missing \(would stay random\): classifier\.bias, classifier\.weight"):
        load_backbone(tmp_path / "v")


def test_the_record_hash_is_that_of_the_file_loaded(tmp_path):
    path = saved_tiny(tmp_path / "m")
    save_file({"x": torch.zeros(3)}, str(path / "unrelated.safetensors"))  # present, never loaded
    assert load_backbone(path).info.weights_sha256 == sha256(path / "model.safetensors")
    save_tiny_timm(tmp_path / "t")
    save_file({"x": torch.zeros(3)}, str(tmp_path / "t" / "adapter.safetensors"))
    assert load_backbone(tmp_path / "t").info.weights_sha256 == sha256(tmp_path / "t" / "model.safetensors")
