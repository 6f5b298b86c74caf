"""Shared pieces of the leaderboard tests: tiny models on the stand-in, records, fast evaluation settings."""

import json
from datetime import datetime, timezone

import torch

import robust_hub
from robust_hub.data import load_image_dataset
from robust_hub.hub_push import push_to_hub
from robust_hub.leaderboard.runner import EvalSettings

from helpers import with_distinct_bn_statistics

KEY = b"k" * 64


def push_tiny(tmp_path, repo_id, seed=0):
    torch.manual_seed(seed)
    model = with_distinct_bn_statistics(robust_hub.create_backbone("robust_resnet_tiny"), seed)
    path = tmp_path / f"model-{repo_id.replace('/', '_')}-{seed}"
    model.save_pretrained(path)
    return path, push_to_hub(str(path), repo_id)


def fast_settings(n_test=16):
    """SLF, 1 epoch, a few digits images: clean, PGD-20 and AutoAttack all really run, in seconds."""
    data = (load_image_dataset("embedded:digits", "train").subset(range(48)),
            load_image_dataset("embedded:digits", "test").subset(range(n_test)))
    return EvalSettings(protocols="slf", dataset=data, metrics="clean,pgd20,autoattack",
                        options={"protocol_overrides": {"epochs": 1}, "n_autoattack": 8, "device": "cpu"})


def record(model_id, commit, clean=0.8, pgd=0.4, aa=0.38, flags=(), protocol="slf", n_test=100):
    """A schema-valid evaluation record with the given headline numbers."""
    return {
        "schema_version": "1",
        "model": {"id": model_id, "revision": commit, "weights_sha256": "0" * 64, "library": "robust_hub"},
        "protocol": {"name": protocol, "settings": {"epochs": 1}},
        "dataset": {"source": "cifar10", "split": "test", "fingerprint": "f", "num_classes": 10, "train_split": "train",
                    "train_fingerprint": "g", "n_train": 100, "n_test": n_test},
        "metric_set": ["clean", "pgd20", "autoattack"],
        "threat": {"norm": "linf", "eps": 8 / 255},
        "metrics": {"clean_acc": clean, "pgd20_acc": pgd, "autoattack_acc": aa},
        "seeds": {"finetune": 0}, "versions": {"python": "3", "torch": "2", "robust_hub": "0"}, "hardware": {},
        "wall_time_s": {"total": 1.0}, "flags": sorted(flags),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def file_result(store, rec, key=KEY):
    """Put a signed result for ``rec`` where the leaderboard's runner would."""
    from robust_hub.leaderboard.requests import request_id
    from robust_hub.leaderboard.results import result_path, sign

    rid = request_id(rec["model"]["id"], rec["model"]["revision"])
    path = result_path(rec, rid)
    assert store.create(path, sign(rec, rid, key))
    return path


def history(store, rid):
    """The states of a request's event files, slot by slot, as written (verified or not)."""
    return [json.loads(store.read(path))["state"] for path in store.list(f"requests/{rid}")]
