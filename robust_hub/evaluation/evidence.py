"""Evidence for robust numbers: the adversarial examples that broke test images, kept so anyone can re-check
a record's robust accuracy with one forward pass (``robust-hub verify``).

Beside a record, ``evidence/<sha256>.safetensors`` holds, per robust metric (``pgd20``, ``autoattack``, each
eps-curve point ``eps_curve/<attack>/<eps>``), the examples an attack found (``indices`` int64 ``[K]``,
``images`` float32 ``[K,C,H,W]``; metadata: metric, attack, eps, norm, record key), and the finetuned classifier
a verifier needs: the head alone where the encoder stays frozen (SLF, ALF, own), the whole network for AFF.
Files are named by the sha256 of their bytes, and the record's ``evidence`` section lists each with its
sha256 and size: an edited file is caught by its hash, an edited number by the recount.

What the examples prove: every image with a valid example (inside the threat model around its test image,
misclassified) or a wrong clean prediction is broken, so robust accuracy is at most the unbroken fraction.
They cannot prove a number is not lower: only stronger attacks can. Evidence read back is untrusted (a
store, the Hub): safetensors only, the header parsed and bounded before any tensor is loaded, sizes,
shapes, dtypes and hashes checked, and no symbolic link followed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from robust_hub.errors import RobustHubError
from robust_hub.io import owned_subdirectory, read_marker, refuse_link, write_bytes_exclusive, write_marker

from robust_hub.evaluation.records import DEFAULT_MAX_BYTES, EVIDENCE_DIR, EVIDENCE_PATH, EvalRecord

MAX_HEADER_BYTES = 1 << 20  # a safetensors header we parse (a ResNet-50 classifier's is ~30 KB)
EPS_TOLERANCE = 1e-5  # float32 rounding of x + delta; a perturbation 1/255 too large is 400 times this
ROBUST_METRICS = {"pgd20": "pgd20_acc", "autoattack": "autoattack_acc"}
FROZEN_ENCODER = ("slf", "alf", "own")  # protocols whose encoder is the pre-trained backbone, unchanged


@dataclass
class AdversarialSet:
    """Adversarial examples an attack found: ``images[k]`` (float32 in [0,1], ``[K,C,H,W]``) is misclassified by the
    attacked model and lies in the threat model around test image ``indices[k]`` (int64 ``[K]``, a position in the
    evaluated test subset, increasing)."""

    indices: torch.Tensor
    images: torch.Tensor

    @classmethod
    def empty(cls, shape: tuple[int, ...] = (3, 32, 32)) -> "AdversarialSet":
        return cls(torch.zeros(0, dtype=torch.long), torch.zeros(0, *shape))

    @classmethod
    def concat(cls, parts: list["AdversarialSet"]) -> "AdversarialSet":
        """Parts of one attack's examples (e.g. from several chunks or processes), ordered by index."""
        parts = [p for p in parts if len(p.indices)]
        if not parts:
            return cls.empty()
        indices, images = torch.cat([p.indices for p in parts]), torch.cat([p.images for p in parts])
        order = indices.argsort()
        return cls(indices[order], images[order])


@dataclass
class VerifyReport:
    ok: bool
    problems: list[str]  # one human-readable line each ("image 17: outside the eps-ball (8.3/255)")
    images: list[int]  # test-set indices that disagree, sorted
    checked: dict[str, dict] = field(default_factory=dict)  # metric -> {"record", "bound", "n", "examples"}


# ----------------------------------------------------------------------------------------- what a record claims
def metric_names(record: dict) -> list[str]:
    """The robust metrics of a record that carry a published number, in a fixed order."""
    m = record["metrics"]
    names = [name for name, key in ROBUST_METRICS.items() if m.get(key) is not None]
    for attack, curve in sorted((m.get("eps_curve") or {}).items()):
        points = sorted(curve.items(), key=lambda kv: float(kv[0]))
        names += [f"eps_curve/{attack}/{e}" for e, v in points if v is not None]
    return names


def claimed(record: dict, name: str) -> tuple[float | None, float, str, int]:
    """(the record's accuracy, eps, attack, images attacked) for metric ``name``."""
    m, n_test = record["metrics"], record["dataset"]["n_test"]
    n_aa = record["protocol"]["settings"].get("eval", {}).get("n_autoattack") or n_test
    if name in ROBUST_METRICS:
        value, eps, attack = m.get(ROBUST_METRICS[name]), record["threat"]["eps"], name
    else:
        _, attack, e = name.split("/", 2)
        value, eps = ((m.get("eps_curve") or {}).get(attack) or {}).get(e), float(e)
    return value, float(eps), attack, min(n_aa, n_test) if attack == "autoattack" else n_test


# ----------------------------------------------------------------------------------------- writing
def _detail(measurement: Any) -> dict:
    return getattr(measurement, "detail", None) or {}  # a verdict.Measurement, or None for a metric not measured


def gather(measured: dict[str, Any], record_metrics: dict) -> dict[str, AdversarialSet]:
    """The examples of each published robust number, as the attacks handed them over in a measurement's detail
    (``adversarial``; ``adversarial_curve`` maps each eps-curve point to its examples)."""
    sets: dict[str, AdversarialSet] = {}
    for name, key in ROBUST_METRICS.items():
        if record_metrics.get(key) is not None and _detail(measured.get(name)).get("adversarial") is not None:
            sets[name] = _detail(measured[name])["adversarial"]
    for attack, points in (record_metrics.get("eps_curve") or {}).items():
        found = _detail(measured.get("eps_curve")).get("adversarial_curve") or {}
        sets.update({f"eps_curve/{attack}/{e}": found[e] for e, v in points.items() if v is not None and e in found})
    return sets


def classifier_tensors(classifier: torch.nn.Module, protocol: str) -> dict[str, torch.Tensor]:
    """What a verifier cannot rebuild from the pinned backbone: the head, or everything after AFF."""
    state = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
    return state if protocol not in FROZEN_ENCODER else {k: v for k, v in state.items() if not k.startswith("encoder.")}


def write_evidence(out: Path, record_key: tuple, protocol: str, norm: str, classifier: torch.nn.Module,
                   sets: dict[str, AdversarialSet], claims: dict[str, tuple[float, str, int]],
                   max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Write the evidence files under ``out/evidence`` and return the record's ``evidence`` section.

    ``claims`` maps each metric of ``sets`` to (eps, attack, images attacked). Examples beyond ``max_bytes``
    (all metrics together) are not written; the section says so for each metric left out.
    """
    if not sets:
        return {}
    directory = _evidence_dir(out)
    key_text = json.dumps(list(record_key))
    section: dict[str, Any] = {"max_bytes": int(max_bytes), "metrics": {}}
    used = 0
    for name, adv in sets.items():
        eps, attack, n = claims[name]
        meta = {"metric": name, "attack": attack, "eps": repr(float(eps)), "norm": norm, "record": key_text}
        data = safetensors_bytes({"indices": adv.indices.to(torch.int64), "images": adv.images.to(torch.float32)}, meta)
        facts = {"examples": int(len(adv.indices)), "images": int(n), "attack": attack, "eps": float(eps)}
        if used + len(data) > max_bytes:
            section["metrics"][name] = {**facts, "omitted": f"{len(data)} bytes would pass the evidence bound of "
                                                              f"{max_bytes} bytes (--evidence-max-bytes)"}
            continue
        used += len(data)
        section["metrics"][name] = {**facts, **_write_content_addressed(directory, data)}
    tensors = classifier_tensors(classifier, protocol)
    section["classifier"] = {**_write_content_addressed(directory, safetensors_bytes(tensors, {"record": key_text})),
                             "tensors": "all" if protocol not in FROZEN_ENCODER else "head"}
    return section


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file whose bytes depend only on its content (the library orders metadata as its hash map
    does, differently per process), so that equal evidence has an equal sha256 however many processes made it."""
    codes = {dtype: code for code, (dtype, _) in _DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        blob = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format lets the header be padded to align the data
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def _evidence_dir(out: Path) -> Path:
    """``out/evidence``, listed in the marker of the directory robust-hub owns."""
    marker = read_marker(out)
    if marker is not None and EVIDENCE_DIR not in marker.get("files", []):
        extra = {k: v for k, v in marker.items() if k not in ("written_by", "kind", "files")}
        write_marker(out, marker["kind"], files=[*marker.get("files", []), EVIDENCE_DIR], **extra)
    return owned_subdirectory(out, EVIDENCE_DIR)


def _write_content_addressed(directory: Path, data: bytes) -> dict:
    """``directory/<sha256>.safetensors``, never replacing a file; an identical one already there is kept."""
    from robust_hub.evaluation.loading import sha256_file

    sha = hashlib.sha256(data).hexdigest()
    path = directory / f"{sha}.safetensors"
    if not write_bytes_exclusive(path, data):  # already there: kept only when it holds these bytes
        refuse_link(path)
        if sha256_file(path) != sha:
            raise RobustHubError(f"{path} exists but does not hold what its name says; robust-hub did not write it "
                                 "(move it away)")
    return {"path": f"{EVIDENCE_DIR}/{path.name}", "sha256": sha, "bytes": len(data)}


# ----------------------------------------------------------------------------------------- reading (untrusted)
_DTYPES = {"F32": (torch.float32, 4), "I64": (torch.int64, 8), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
           "F64": (torch.float64, 8), "I32": (torch.int32, 4), "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1)}


def read_evidence_file(path: Path, entry: dict, max_bytes: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of one evidence file, after checking it is a regular file (not a link) of the
    record's size (at most ``max_bytes``) and sha256, and that its safetensors header is well formed."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise RobustHubError(f"{entry['path']}: cannot open ({exc.strerror or exc}; links are not followed)") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise RobustHubError(f"{entry['path']}: not a regular file")
        if info.st_size > max_bytes:
            raise RobustHubError(f"{entry['path']}: {info.st_size} bytes, more than the {max_bytes} its record allows")
        data = handle.read(max_bytes + 1)
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise RobustHubError(f"{entry['path']}: its bytes are not the ones the record names (size or sha256 differ)")
    header = _parse_header(data, entry["path"])
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error types for a malformed file
        raise RobustHubError(f"{entry['path']}: not a valid safetensors file ({exc})") from None
    return tensors, header.get("__metadata__") or {}


def _parse_header(data: bytes, name: str) -> dict:
    bad = f"{name}: not a safetensors file"
    if len(data) < 8:
        raise RobustHubError(f"{bad} (too short)")
    size = int.from_bytes(data[:8], "little")
    if size > min(MAX_HEADER_BYTES, len(data) - 8):
        raise RobustHubError(f"{bad} (header of {size} bytes in a {len(data)}-byte file)")
    try:
        header = json.loads(data[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RobustHubError(f"{bad} (header is not JSON)") from None
    if not isinstance(header, dict):
        raise RobustHubError(f"{bad} (header is not an object)")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise RobustHubError(f"{bad} (metadata must map names to strings)")
    for tensor, spec in header.items():
        if tensor == "__metadata__":
            continue
        ok = (isinstance(spec, dict) and spec.get("dtype") in _DTYPES and isinstance(spec.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in spec["shape"])
              and isinstance(spec.get("data_offsets"), list) and len(spec["data_offsets"]) == 2)
        start, end = spec["data_offsets"] if ok else (0, -1)
        if not ok or end - start != math.prod(spec["shape"]) * _DTYPES[spec["dtype"]][1]:
            raise RobustHubError(f"{bad} (tensor {tensor!r} is malformed)")
    return header


def _expect(tensors: dict, want: dict[str, tuple[torch.dtype, tuple | None]], name: str) -> None:
    """Exactly the tensors ``want`` names, of its dtypes and shapes (None: any)."""
    if set(tensors) != set(want):
        raise RobustHubError(f"{name}: holds tensors {sorted(tensors)}, expected {sorted(want)}")
    for key, (dtype, shape) in want.items():
        t = tensors[key]
        if t.dtype != dtype or (shape is not None and tuple(t.shape) != tuple(shape)):
            want_text = f"{dtype} {shape or ''}".rstrip()
            raise RobustHubError(f"{name}: {key} is {t.dtype} {tuple(t.shape)}, expected {want_text}")


def _fetched(fetch: Callable[[str], Path], entry: dict) -> Path:
    if not isinstance(entry.get("path"), str) or EVIDENCE_PATH.fullmatch(entry["path"]) is None:
        raise RobustHubError(f"evidence path {entry.get('path')!r} is not evidence/<sha256>.safetensors")
    try:
        return Path(fetch(entry["path"]))
    except RobustHubError:
        raise
    except Exception as exc:  # a missing file, a Hub error: the evidence cannot be read
        raise RobustHubError(f"{entry['path']}: cannot fetch it ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------------------- verifying
def verify_record(record: dict, fetch: Callable[[str], Path], *, device="cpu", model_loader=None,
                  dataset_loader=None) -> VerifyReport:
    """Re-check a record's robust numbers against its evidence with one forward pass.

    ``fetch(relative_path)`` gives a local file for a path the record names; ``model_loader(record)`` and
    ``dataset_loader(record)`` default to the model at its pinned revision and the test split by its name.
    A record, model or test set that cannot be checked at all raises :class:`RobustHubError`; a bad evidence
    file or any disagreement is a problem in the report.
    """
    rec = EvalRecord.from_dict(record)
    evidence = record.get("evidence") or {}
    if not evidence:
        raise RobustHubError("the record has no evidence (no published robust number, or evaluated before "
                             "robust-hub kept evidence)")
    backbone = (model_loader or load_pinned_model)(record)
    problems = []
    if backbone.info.weights_sha256 != rec.model.weights_sha256:
        problems.append(f"weights: sha256 {backbone.info.weights_sha256[:16]}... is not the record's "
                        f"{rec.model.weights_sha256[:16]}...")
    test = _test_subset((dataset_loader or load_test_set)(record), rec)
    classifier = load_classifier(backbone, record, fetch).to(device).eval()
    x = test.images.float().div(255)
    clean_wrong = predict(classifier, x, device) != test.labels
    checked: dict[str, dict] = {}
    if rec.metrics.get("clean_acc") is not None:
        n = len(x)
        acc = 1 - clean_wrong.sum().item() / n
        checked["clean"] = {"record": rec.metrics["clean_acc"], "bound": acc, "n": n, "examples": 0}
        if abs(acc - rec.metrics["clean_acc"]) > 0.5 / n:
            problems.append(f"clean: the record says {rec.metrics['clean_acc']:.4f}, the model gets {acc:.4f}")
    images: set[int] = set()
    for name in metric_names(record):
        value, eps, attack, n = claimed(record, name)
        try:
            adv = read_examples(evidence, name, fetch, rec, test, eps, attack, n)
        except RobustHubError as exc:
            problems.append(f"{name}: {exc}")
            continue
        invalid = invalid_examples(classifier, x, test.labels, adv, eps, rec.threat.norm, device)
        problems += [f"{name}: image {i}: {why}" for i, why in invalid.items()]
        images.update(invalid)
        broken = clean_wrong[:n].clone()
        broken[[i for i in adv.indices.tolist() if i not in invalid]] = True
        bound = 1 - broken.sum().item() / n
        checked[name] = {"record": value, "bound": bound, "n": n, "examples": len(adv.indices)}
        if abs(value - bound) > 0.5 / n:
            problems.append(f"{name}: the record says {value:.4f}; its evidence breaks {int(broken.sum())} of {n} "
                            f"images, so it proves at most {bound:.4f}")
    return VerifyReport(not problems, problems, sorted(images), checked)


def load_pinned_model(record: dict):
    """The backbone a record evaluated, at its pinned revision (a local directory by its path)."""
    from robust_hub.evaluation.loading import load_backbone

    model = record["model"]
    if model["revision"].startswith(("module-sha256:", "file-sha256:")):
        raise RobustHubError(f"{model['id']} was evaluated as an in-memory module or a pickle checkpoint; verify "
                             "cannot reload it (pass model_loader)")
    if model["revision"].startswith("local-sha256:"):
        return load_backbone(model["id"])
    return load_backbone(model["id"], revision=model["revision"])


def load_test_set(record: dict, source: str | None = None):
    """The record's test split by the name it was loaded with (or from ``source``, e.g. a local copy), at the
    image size it was evaluated at; its fingerprint is checked by the caller."""
    from robust_hub.evaluation.runner import load_split

    source, split, n = source or record["dataset"]["source"], record["dataset"]["split"], record["dataset"]["n_test"]
    test = load_split(source, split, n=n)  # decodes only the images the record evaluated
    size = record["protocol"]["settings"].get("image_size")
    return load_split(source, split, size, n=n) if size and test.images.shape[-1] != size else test


def _test_subset(test, rec):
    if test.fingerprint != rec.dataset.fingerprint:
        raise RobustHubError(f"the test set {rec.dataset.source}:{rec.dataset.split} has fingerprint "
                             f"{test.fingerprint[:16]}..., not the record's {rec.dataset.fingerprint[:16]}...")
    if len(test.images) < rec.dataset.n_test:
        raise RobustHubError(f"the test set has {len(test.images)} images; the record evaluated {rec.dataset.n_test}")
    return test.head(rec.dataset.n_test)


def load_classifier(backbone, record: dict, fetch: Callable[[str], Path]):
    """The finetuned classifier: the pinned backbone with the stored head (or the stored AFF network)."""
    from robust_hub.evaluation.protocols import Classifier

    model = Classifier(copy.deepcopy(backbone), backbone.num_features, record["dataset"]["num_classes"])
    state = model.state_dict()
    frozen = record["protocol"]["name"] in FROZEN_ENCODER
    want = {k: (v.dtype, tuple(v.shape)) for k, v in state.items() if not (frozen and k.startswith("encoder."))}
    entry = record["evidence"].get("classifier") or {}
    limit = sum(state[k].numel() * state[k].element_size() for k in want) + MAX_HEADER_BYTES
    tensors, _ = read_evidence_file(_fetched(fetch, entry), entry, limit)
    _expect(tensors, want, entry["path"])
    model.load_state_dict({**state, **tensors}, strict=True)
    return model


def read_examples(evidence: dict, name: str, fetch, rec, test, eps: float, attack: str, n: int) -> AdversarialSet:
    """One metric's stored examples, checked against what the record says they are."""
    entry = evidence["metrics"].get(name)
    if entry is None:
        raise RobustHubError("the record has no evidence for this number")
    if "omitted" in entry:
        raise RobustHubError(f"no evidence was stored: {entry['omitted']}")
    shape = tuple(test.images.shape[1:])
    limit = n * (8 + 4 * math.prod(shape)) + MAX_HEADER_BYTES
    tensors, meta = read_evidence_file(_fetched(fetch, entry), entry, limit)
    _expect(tensors, {"indices": (torch.int64, None), "images": (torch.float32, None)}, entry["path"])
    indices, images = tensors["indices"], tensors["images"]
    if indices.dim() != 1 or tuple(images.shape) != (len(indices), *shape):
        raise RobustHubError(f"{entry['path']}: shapes {tuple(indices.shape)} and {tuple(images.shape)} are not "
                             f"[K] and [K, {', '.join(map(str, shape))}]")
    if len(indices) and (indices.min() < 0 or indices.max() >= n or (indices.diff() <= 0).any()):
        raise RobustHubError(f"{entry['path']}: indices must increase and lie in [0, {n})")
    expected = {"metric": name, "attack": attack, "norm": rec.threat.norm, "record": json.dumps(list(rec.key))}
    wrong = [k for k, v in expected.items() if meta.get(k) != v] + ([] if _same_eps(meta.get("eps"), eps) else ["eps"])
    if wrong:
        raise RobustHubError(f"{entry['path']}: its metadata ({', '.join(wrong)}) is not this record's")
    return AdversarialSet(indices, images)


def _same_eps(text: Any, eps: float) -> bool:
    try:
        return abs(float(text) - eps) <= 1e-12
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def predict(classifier, x: torch.Tensor, device, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([classifier(x[i:i + batch_size].to(device)).argmax(1).cpu()
                      for i in range(0, len(x), batch_size)]) if len(x) else torch.zeros(0, dtype=torch.long)


def invalid_examples(classifier, x: torch.Tensor, labels: torch.Tensor, adv: AdversarialSet, eps: float, norm: str,
                     device) -> dict[int, str]:
    """Test index -> why its stored example does not break it (outside the threat model, or classified right)."""
    if not len(adv.indices):
        return {}
    delta = (adv.images - x[adv.indices]).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    finite = torch.isfinite(adv.images.flatten(1)).all(1)
    in_range = (adv.images.flatten(1).amin(1) >= 0) & (adv.images.flatten(1).amax(1) <= 1)
    correct = predict(classifier, adv.images, device) == labels[adv.indices]
    unit = (lambda v: f"{255 * v:.3g}/255") if norm == "linf" else (lambda v: f"{v:.4g}")
    out = {}
    for k, i in enumerate(adv.indices.tolist()):
        if not finite[k]:
            out[i] = "the example is not finite"
        elif not in_range[k]:
            out[i] = "the example leaves [0,1]"
        elif size[k] > eps + EPS_TOLERANCE:
            out[i] = f"outside the eps-ball ({unit(size[k].item())} > {unit(eps)}, {norm})"
        elif correct[k]:
            out[i] = "the model classifies the example correctly"
    return out
