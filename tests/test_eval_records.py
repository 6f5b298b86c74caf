"""Result records: schema validation, atomic writes, keys."""

import copy
import json

import pytest

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.records import (EvalRecord, atomic_write_json, find_record, load_records, read_record,
                                           write_record)


def _record() -> dict:
    return {
        "schema_version": "1",
        "model": {"id": "org/model", "revision": "a" * 40, "weights_sha256": "b" * 64, "library": "timm"},
        "protocol": {"name": "slf", "settings": {"epochs": 25, "lr": 0.01}},
        "dataset": {"source": "uoft-cs/cifar10", "split": "test", "fingerprint": "f", "num_classes": 10,
                    "train_split": "train", "train_fingerprint": "g", "n_train": 50000, "n_test": 10000},
        "metric_set": ["clean", "pgd20", "autoattack", "c10c"],
        "threat": {"norm": "linf", "eps": 8 / 255},
        "metrics": {"clean_acc": 0.8, "pgd20_acc": 0.45, "autoattack_acc": 0.4,
                    "c10c": {"per_corruption": {"fog": {str(s): 0.7 for s in range(1, 6)}},
                             "mean_per_severity": {str(s): 0.7 for s in range(1, 6)}, "mean": 0.7, "generated": False}},
        "seeds": {"finetune": 0, "attack": 0},
        "versions": {"python": "3.11", "torch": "2", "robust_hub": "0.1.0"},
        "hardware": {"device": "cpu"},
        "wall_time_s": {"finetune": 1.0, "total": 2.0},
        "flags": [],
        "created_at": "2025-01-01T00:00:00+00:00",
    }


def test_round_trip(tmp_path):
    rec = EvalRecord.from_dict(_record())
    path = write_record(rec, tmp_path)
    assert read_record(path) == rec
    assert find_record(tmp_path, rec.key) == rec
    assert load_records(tmp_path) == [rec]
    assert not list(tmp_path.glob(".*tmp"))


def test_key_separates_threat_models(tmp_path):
    a = EvalRecord.from_dict(_record())
    d = _record()
    d["threat"]["eps"] = 4 / 255
    b = EvalRecord.from_dict(d)
    assert a.key != b.key
    write_record(a, tmp_path)
    assert find_record(tmp_path, b.key) is None


@pytest.mark.parametrize("change", [
    lambda d: d["model"].update(id="org/other"),
    lambda d: d["model"].update(revision="c" * 40),
    lambda d: d["protocol"].update(name="alf"),
    lambda d: d["dataset"].update(source="uoft-cs/cifar100"),
    lambda d: d.update(metric_set=["clean", "pgd20"]),
    lambda d: d["threat"].update(norm="l2", eps=0.5),
])
def test_every_part_of_a_results_identity_gets_its_own_record_file(change, tmp_path):
    """A new revision (or protocol, data, metrics, threat) never finds, reuses or overwrites another's record."""
    a = EvalRecord.from_dict(_record())
    d = _record()
    change(d)
    b = EvalRecord.from_dict(d)
    assert a.key != b.key
    write_record(a, tmp_path)
    assert find_record(tmp_path, b.key) is None
    write_record(b, tmp_path)
    assert sorted(r.key for r in load_records(tmp_path)) == sorted([a.key, b.key])


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(schema_version="2"),
    lambda d: d.pop("flags"),
    lambda d: d.update(extra=1),
    lambda d: d["model"].update(weights_sha256="xyz"),
    lambda d: d["protocol"].update(name="knn"),
    lambda d: d["metrics"].update(clean_acc=1.5),
    lambda d: d["metrics"].update(autoattack_acc=None),  # withheld without the flag
    lambda d: d["metrics"]["c10c"].update(generated=True),  # generated without the flag
    lambda d: d["metrics"]["c10c"]["per_corruption"]["fog"].update({"6": 0.5}),
    lambda d: d["threat"].update(norm="l1"),
    lambda d: d["dataset"].update(num_classes=0),
    lambda d: d["wall_time_s"].update(total=-1),
])
def test_malformed_records_are_rejected(mutate, tmp_path):
    d = _record()
    mutate(d)
    with pytest.raises(RobustHubError):
        EvalRecord.from_dict(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(RobustHubError, match="bad.json"):
        read_record(path)


def test_withheld_robust_accuracy_needs_its_flag():
    d = _record()
    d["metrics"]["autoattack_acc"] = None
    d["flags"] = ["masked_gradients", "robust_acc_withheld"]
    assert EvalRecord.from_dict(d).metrics["autoattack_acc"] is None


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_record())[:50])
    with pytest.raises(RobustHubError, match="JSON"):
        read_record(path)


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(ValueError):
        atomic_write_json(path, {"a": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_records_are_independent_copies():
    d = _record()
    rec = EvalRecord.from_dict(copy.deepcopy(d))
    assert rec.to_dict() == d
