"""Result records: one JSON file per (model, revision, protocol, dataset, metric set).

A record is checked against the versioned schema below when it is written and when it is read;
files are written atomically (temporary file + ``os.replace``), so a crash never leaves half a
record, and a rerun skips every key that already has a valid record.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from robust_hub.errors import RobustHubError
from robust_hub.io import write_json_atomic

SCHEMA_VERSION = "1"
METRIC_NAMES = ("clean", "pgd20", "autoattack", "c10c")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so readers see either the old or the new file, never half."""
    write_json_atomic(path, obj, sort_keys=True)


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RobustHubError(f"cannot read {path} as JSON ({exc})") from exc


# ----------------------------------------------------------------------------------------- schema
def _check(cond: bool, what: str) -> None:
    if not cond:
        raise RobustHubError(f"invalid result record: {what}")


def _is_acc(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0.0 <= v <= 1.0


def _str_fields(obj: Any, names: tuple[str, ...], section: str) -> None:
    for n in names:
        _check(isinstance(getattr(obj, n), str) and getattr(obj, n) != "", f"{section}.{n} must be a non-empty string")


@dataclass(frozen=True)
class ModelSection:
    id: str
    revision: str
    weights_sha256: str
    library: str

    def validate(self) -> None:
        _str_fields(self, ("id", "revision", "weights_sha256", "library"), "model")
        _check(re.fullmatch(r"[0-9a-f]{64}", self.weights_sha256) is not None, "model.weights_sha256 must be a sha256")


@dataclass(frozen=True)
class ProtocolSection:
    name: str
    settings: dict

    def validate(self) -> None:
        _check(self.name in ("slf", "alf", "aff", "own"), "protocol.name must be slf, alf, aff or own")
        _check(isinstance(self.settings, dict), "protocol.settings must be an object")


@dataclass(frozen=True)
class DatasetSection:
    source: str
    split: str
    fingerprint: str
    num_classes: int
    train_split: str
    train_fingerprint: str
    n_train: int
    n_test: int

    def validate(self) -> None:
        _str_fields(self, ("source", "split", "fingerprint", "train_split", "train_fingerprint"), "dataset")
        for n in ("num_classes", "n_train", "n_test"):
            v = getattr(self, n)
            _check(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"dataset.{n} must be a positive integer")


@dataclass(frozen=True)
class ThreatSection:
    norm: str
    eps: float

    def validate(self) -> None:
        _check(self.norm in ("linf", "l2"), "threat.norm must be linf or l2")
        _check(isinstance(self.eps, (int, float)) and self.eps >= 0, "threat.eps must be a non-negative number")


def _validate_c10c(c: Any) -> None:
    _check(isinstance(c, dict), "metrics.c10c must be an object")
    _check(isinstance(c.get("generated"), bool), "metrics.c10c.generated must be true or false")
    _check(_is_acc(c.get("mean")), "metrics.c10c.mean must be an accuracy in [0,1]")
    per = c.get("per_corruption")
    _check(isinstance(per, dict) and per, "metrics.c10c.per_corruption must be a non-empty object")
    for name, sev in per.items():
        _check(isinstance(sev, dict) and sev and all(k in "12345" and len(k) == 1 and _is_acc(v) for k, v in sev.items()),
               f"metrics.c10c.per_corruption.{name} must map severities 1-5 to accuracies")
    means = c.get("mean_per_severity")
    _check(isinstance(means, dict) and all(_is_acc(v) for v in means.values()),
           "metrics.c10c.mean_per_severity must map severities to accuracies")


def _validate_metrics(m: Any, metric_set: list[str], flags: list[str]) -> None:
    _check(isinstance(m, dict), "metrics must be an object")
    if "clean" in metric_set:
        _check(_is_acc(m.get("clean_acc")), "metrics.clean_acc must be an accuracy in [0,1]")
    for name, key in (("pgd20", "pgd20_acc"), ("autoattack", "autoattack_acc")):
        if name in metric_set:
            v = m.get(key)
            _check(_is_acc(v) or (v is None and "robust_acc_withheld" in flags),
                   f"metrics.{key} must be an accuracy, or null with the robust_acc_withheld flag")
    if "c10c" in metric_set:
        _validate_c10c(m.get("c10c"))
        _check(("generated_corruptions" in flags) == m["c10c"]["generated"],
               "a generated CIFAR-10-C result must carry the generated_corruptions flag")
    curve = m.get("eps_curve")
    if curve is not None:
        _check(isinstance(curve, dict) and all(isinstance(v, dict) for v in curve.values()), "metrics.eps_curve malformed")


EVIDENCE_DIR = "evidence"
# A full CIFAR-10 evaluation (PGD-20 and AutoAttack on 10,000 images) stores at most 2 x 10,000 x 12,296 bytes
# of examples (every image broken): 246 MB. The default bound on a record's examples fits that worst case.
DEFAULT_MAX_BYTES = 256 * 2**20
EVIDENCE_PATH = re.compile(r"evidence/[0-9a-f]{64}\.safetensors")


def evidence_files(record: dict) -> list:
    """The files a record's evidence section names: its classifier and each metric's examples not omitted."""
    ev = record.get("evidence") or {}
    if not ev:
        return []
    return [ev.get("classifier"), *(e for e in ev["metrics"].values() if "omitted" not in e)]


def _validate_evidence(ev: Any) -> None:
    """Only the shape of the section; evidence.verify_record checks what the files hold."""
    _check(isinstance(ev, dict), "evidence must be an object")
    if not ev:
        return
    _check(isinstance(ev.get("metrics"), dict) and isinstance(ev.get("max_bytes"), int)
           and all(isinstance(e, dict) for e in ev["metrics"].values()), "evidence must have metrics and max_bytes")
    for entry in evidence_files({"evidence": ev}):
        _check(isinstance(entry, dict) and isinstance(entry.get("path"), str)
               and EVIDENCE_PATH.fullmatch(entry["path"]) is not None
               and entry["path"] == f"evidence/{entry.get('sha256')}.safetensors"
               and isinstance(entry.get("bytes"), int) and entry["bytes"] > 0,
               "evidence files must be evidence/<sha256>.safetensors with their sha256 and size")


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation result; ``validate`` enforces schema version 1."""

    schema_version: str
    model: ModelSection
    protocol: ProtocolSection
    dataset: DatasetSection
    metric_set: list
    threat: ThreatSection
    metrics: dict
    seeds: dict
    versions: dict
    hardware: dict
    wall_time_s: dict
    flags: list
    created_at: str
    evidence: dict = field(default_factory=dict)  # see evaluation/evidence.py; absent in records made before it

    def validate(self) -> "EvalRecord":
        _check(self.schema_version == SCHEMA_VERSION, f"schema_version must be {SCHEMA_VERSION!r}")
        for section in (self.model, self.protocol, self.dataset, self.threat):
            section.validate()
        _check(isinstance(self.metric_set, list) and self.metric_set and set(self.metric_set) <= set(METRIC_NAMES),
               f"metric_set must be a non-empty list drawn from {METRIC_NAMES}")
        _check(isinstance(self.flags, list) and all(isinstance(f, str) for f in self.flags), "flags must be strings")
        _validate_metrics(self.metrics, self.metric_set, self.flags)
        _check(isinstance(self.seeds, dict) and all(isinstance(v, int) for v in self.seeds.values()), "seeds must be integers")
        _check(isinstance(self.versions, dict) and {"python", "torch", "robust_hub"} <= set(self.versions),
               "versions must name python, torch and robust_hub")
        _check(isinstance(self.hardware, dict), "hardware must be an object")
        _check(isinstance(self.wall_time_s, dict) and all(isinstance(v, (int, float)) and v >= 0
                                                           for v in self.wall_time_s.values()),
               "wall_time_s must map parts to non-negative seconds")
        _check(isinstance(self.created_at, str) and self.created_at != "", "created_at must be a timestamp")
        _validate_evidence(self.evidence)
        return self

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return record_key(self.model.id, self.model.revision, self.protocol.name, self.dataset.source, self.metric_set,
                          self.threat.norm, self.threat.eps)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["evidence"]:  # a record without evidence reads exactly as before the field existed
            del d["evidence"]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "EvalRecord":
        _check(isinstance(d, dict), "a record must be a JSON object")
        names = {f.name for f in fields(cls)}
        _check(names - {"evidence"} <= set(d) <= names, f"fields must be exactly {sorted(names)} (got {sorted(d)})")
        sections = {"model": ModelSection, "protocol": ProtocolSection, "dataset": DatasetSection, "threat": ThreatSection}
        kw = dict(d)
        for name, typ in sections.items():
            part = d[name]
            want = {f.name for f in fields(typ)}
            _check(isinstance(part, dict) and set(part) == want, f"{name} must have exactly the fields {sorted(want)}")
            kw[name] = typ(**part)
        return cls(**kw).validate()


def record_key(model_id: str, revision: str, protocol: str, dataset: str, metric_set: list[str], norm: str,
               eps: float) -> tuple:
    """The identity of a result: model, revision, protocol, dataset and metric set (with its threat model)."""
    return (model_id, revision, protocol, dataset, f"{','.join(metric_set)}@{norm}:{float(eps):.8g}")


def record_filename(key: tuple) -> str:
    digest = hashlib.sha256(json.dumps(list(key)).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{Path(key[0]).name}_{key[2]}_{Path(key[3]).name}").strip("-")
    return f"{slug[:80]}_{digest}.json"


def write_record(record: EvalRecord, out_dir: str | Path) -> Path:
    record.validate()
    path = Path(out_dir) / record_filename(record.key)
    atomic_write_json(path, record.to_dict())
    return path


def read_record(path: str | Path) -> EvalRecord:
    try:
        return EvalRecord.from_dict(read_json(path))
    except RobustHubError as exc:
        raise RobustHubError(f"{path}: {exc}") from exc


def load_records(out_dir: str | Path) -> list[EvalRecord]:
    """Every record in ``out_dir``; a malformed file is an error, not silently skipped."""
    out = Path(out_dir)
    return [read_record(p) for p in sorted(out.glob("*.json"))] if out.is_dir() else []


def find_record(out_dir: str | Path, key: tuple) -> EvalRecord | None:
    """The valid record stored for ``key``, or None when there is none yet."""
    path = Path(out_dir) / record_filename(key)
    if not path.exists():
        return None
    record = read_record(path)
    return record if record.key == key else None
