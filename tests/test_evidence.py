"""Evidence beside every robust number, and `robust-hub verify`: a fresh record verifies; changed weights, an
example moved out of the eps-ball, an edited accuracy and bad evidence files are caught and named."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save, save_file

import robust_hub
import robust_hub.evaluation.runner as runner
from robust_hub.cli import main as cli
from robust_hub.evaluation.evidence import verify_record
from robust_hub.evaluation.loading import load_backbone
from robust_hub.evaluation.protocols import Classifier
from robust_hub.evaluation.verify import local_fetch

EPS = 8 / 255
CURVE = 2 / 255
SETTINGS = {"epochs": 5, "batch_size": 32, "lr": 0.5, "augment": False}  # 28% clean: some images break, some not


def evaluate_with_evidence(model_dir, out, dataset="embedded:digits", protocols="slf", **kw):
    options = dict(metrics="clean,pgd20", eps=EPS, eps_curve=(CURVE,), n_train=256, n_test=32,
                   protocol_overrides=SETTINGS, progress=False, print_table=False, device="cpu")
    return runner.evaluate(str(model_dir), protocols=protocols, dataset=dataset, out_dir=out, **{**options, **kw})


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny robust-hub backbone, its SLF record on 32 digits, and the evidence beside it."""
    root = tmp_path_factory.mktemp("evidence")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    robust_hub.create_backbone("robust_resnet_tiny").save_pretrained(root / "model")
    (record,) = evaluate_with_evidence(root / "model", root / "out")
    (path,) = (root / "out").glob("*.json")
    return root, record, path


@pytest.fixture
def copy(evaluated, tmp_path):
    """A copy of the eval directory this test may change: (record path, record)."""
    root, record, path = evaluated
    shutil.copytree(root / "out", tmp_path / "out")
    return tmp_path / "out" / path.name, json.loads(path.read_text())


def _verify(record_path: Path, record: dict, **kw):
    return verify_record(record, local_fetch(record_path.parent), **kw)


def _rewrite_evidence(record_path: Path, record: dict, name: str, tensors: dict, metadata: dict | None = None,
                      data: bytes | None = None) -> dict:
    """Replace one metric's evidence file and point the record at it (as someone editing both would)."""
    entry = record["evidence"]["metrics"][name]
    old = load_file(str(record_path.parent / entry["path"]))
    if metadata is None:
        from safetensors import safe_open
        with safe_open(str(record_path.parent / entry["path"]), "pt") as f:
            metadata = f.metadata()
    data = data if data is not None else save({**old, **tensors}, metadata=metadata)
    sha = hashlib.sha256(data).hexdigest()
    (record_path.parent / "evidence" / f"{sha}.safetensors").write_bytes(data)
    entry.update(path=f"evidence/{sha}.safetensors", sha256=sha, bytes=len(data))
    record_path.write_text(json.dumps(record))
    return entry


def _classifier(model_dir: Path, out: Path, backbone=None) -> Classifier:
    """The classifier as the run finetuned it: its resumable state file, independent of the evidence."""
    backbone = backbone or load_backbone(model_dir)
    (state,) = (out / "state").glob("*.classifier.safetensors")
    model = Classifier(backbone, backbone.num_features, 10)
    model.load_state_dict({**model.state_dict(), **{k: v for k, v in load_file(str(state)).items()
                                                      if k.startswith("head.")}})
    return model.eval()


# ----------------------------------------------------------------------------------------- writing
def test_evidence_files_are_content_addressed_and_named_in_the_record(evaluated):
    root, record, path = evaluated
    ev = record["evidence"]
    assert set(ev["metrics"]) == {"pgd20", f"eps_curve/pgd20/{CURVE:.8g}"}
    for name, entry in ev["metrics"].items():
        data = (root / "out" / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["path"] == f"evidence/{entry['sha256']}.safetensors"
        assert entry["bytes"] == len(data) and entry["images"] == 32
        tensors = load_file(str(root / "out" / entry["path"]))
        assert tensors["indices"].dtype == torch.int64 and tensors["images"].dtype == torch.float32
        assert entry["examples"] == len(tensors["indices"]) > 0
    # the frozen-encoder protocol keeps only the head: the verifier takes the encoder from the pinned model
    head = load_file(str(root / "out" / ev["classifier"]["path"]))
    assert set(head) == {"head.weight", "head.bias"} and ev["classifier"]["tensors"] == "head"
    assert "evidence" in json.loads((root / "out" / ".robust-hub").read_text())["files"]


def test_aff_keeps_the_whole_finetuned_network(tmp_path, evaluated):
    root, _, _ = evaluated
    (record,) = evaluate_with_evidence(root / "model", tmp_path / "out", protocols="aff",
                                       protocol_overrides={**SETTINGS, "lr": 0.01, "epochs": 1,
                                                           "train_attack.steps": 1})
    assert record["metrics"]["pgd20_acc"] is not None, record["flags"]
    tensors = load_file(str(tmp_path / "out" / record["evidence"]["classifier"]["path"]))
    assert any(k.startswith("encoder.") for k in tensors) and {"head.weight", "head.bias"} <= set(tensors)
    (path,) = (tmp_path / "out").glob("*.json")
    assert _verify(path, record).ok


def test_examples_beyond_the_bound_are_named_not_dropped(tmp_path, evaluated):
    root, full, _ = evaluated
    first = full["evidence"]["metrics"]["pgd20"]["bytes"]
    (record,) = evaluate_with_evidence(root / "model", tmp_path / "out", evidence_max_bytes=first)
    ev = record["evidence"]["metrics"]
    assert "omitted" not in ev["pgd20"] and "--evidence-max-bytes" in ev[f"eps_curve/pgd20/{CURVE:.8g}"]["omitted"]
    (path,) = (tmp_path / "out").glob("*.json")
    report = _verify(path, record)
    assert not report.ok
    assert any(p.startswith(f"eps_curve/pgd20/{CURVE:.8g}: no evidence was stored") for p in report.problems)


# ----------------------------------------------------------------------------------------- verifying
def test_a_fresh_record_verifies_and_the_bound_is_recounted(evaluated):
    root, record, path = evaluated
    report = _verify(path, record)
    assert report.ok, report.problems
    assert report.images == []
    # the bound, counted here from the run's own classifier: clean mistakes plus images with an example
    model = _classifier(root / "model", root / "out")
    test = runner.load_split("embedded:digits", "test").head(32)
    with torch.no_grad():
        clean_wrong = model(test.images.float() / 255).argmax(1) != test.labels
    for name in ("pgd20", f"eps_curve/pgd20/{CURVE:.8g}"):
        indices = load_file(str(root / "out" / record["evidence"]["metrics"][name]["path"]))["indices"]
        broken = clean_wrong.clone()
        broken[indices] = True
        assert 0 < clean_wrong.sum() < broken.sum()  # both kinds of broken images occur
        assert report.checked[name]["bound"] == pytest.approx(1 - broken.float().mean().item())
        assert report.checked[name]["examples"] == len(indices) and report.checked[name]["n"] == 32
    assert report.checked["pgd20"]["record"] == record["metrics"]["pgd20_acc"]
    assert report.checked["clean"]["bound"] == pytest.approx(1 - clean_wrong.float().mean().item())


def test_weights_changed_in_one_tensor_fail_naming_the_images(evaluated, tmp_path):
    root, record, path = evaluated
    shutil.copytree(root / "model", tmp_path / "model")
    weights = load_file(str(tmp_path / "model" / "model.safetensors"))
    name = sorted(k for k in weights if k.endswith("conv1.weight"))[0]
    weights[name] = -weights[name]
    save_file(weights, str(tmp_path / "model" / "model.safetensors"))
    changed = load_backbone(tmp_path / "model")
    report = _verify(path, record, model_loader=lambda r: changed)
    assert not report.ok and report.problems[0].startswith("weights: sha256")
    # the images named are exactly the stored examples the changed classifier now gets right
    model = _classifier(root / "model", root / "out", backbone=changed)
    now_right = set()
    for entry in record["evidence"]["metrics"].values():
        ex = load_file(str(root / "out" / entry["path"]))
        with torch.no_grad():
            labels = runner.load_split("embedded:digits", "test").labels[ex["indices"]]
            right = model(ex["images"]).argmax(1) == labels
        now_right |= set(ex["indices"][right].tolist())
    assert now_right and report.images == sorted(now_right)
    for i in now_right:
        assert any(f"image {i}: the model classifies the example correctly" in p for p in report.problems)


def test_an_example_moved_out_of_the_eps_ball_is_named(copy):
    path, record = copy
    ex = load_file(str(path.parent / record["evidence"]["metrics"]["pgd20"]["path"]))
    k, i = 1, int(ex["indices"][1])
    test = runner.load_split("embedded:digits", "test")
    x = test.images[i].float() / 255
    moved = ex["images"].clone()
    # one pixel 1/255 beyond the ball (the direction that stays inside [0,1])
    sign = 1.0 if x[0, 0, 0] < 0.5 else -1.0
    moved[k, 0, 0, 0] = x[0, 0, 0] + sign * (EPS + 1 / 255)
    _rewrite_evidence(path, record, "pgd20", {"images": moved})
    report = _verify(path, record)
    assert not report.ok and report.images == [i]
    assert f"pgd20: image {i}: outside the eps-ball (9/255 > 8/255, linf)" in report.problems
    assert any(p.startswith("pgd20: the record says") for p in report.problems)  # one broken image fewer
    assert cli(["verify", str(path), "--device", "cpu"]) == 2


def test_an_edited_accuracy_fails_with_both_numbers(copy, capsys):
    path, record = copy
    n = record["dataset"]["n_test"]
    claimed = record["metrics"]["pgd20_acc"]
    record["metrics"]["pgd20_acc"] = claimed + 1 / n
    path.write_text(json.dumps(record))
    report = _verify(path, record)
    assert not report.ok and report.images == []
    assert report.problems == [f"pgd20: the record says {claimed + 1 / n:.4f}; its evidence breaks "
                               f"{round((1 - claimed) * n)} of {n} images, so it proves at most {claimed:.4f}"]
    assert cli(["verify", str(path.parent), "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert "DISAGREES" in out and err.count("\n") == 1 and err.startswith("error: 1 of 1 record(s) disagree")


def test_cli_passes_on_a_fresh_directory(evaluated, capsys):
    root, record, path = evaluated
    assert cli(["verify", str(root / "out"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"record {record['metrics']['pgd20_acc']:.4f}  bound {record['metrics']['pgd20_acc']:.4f}" in out
    assert "verified: 1 record(s) agree" in out


# ----------------------------------------------------------------------------------------- untrusted files
def _corrupt(path, record):
    entry = record["evidence"]["metrics"]["pgd20"]
    data = bytearray((path.parent / entry["path"]).read_bytes())
    data[-3] ^= 0x40  # inside the last example's pixels: still a valid file, just not the recorded one
    (path.parent / entry["path"]).write_bytes(bytes(data))
    return "its bytes are not the ones the record names"


def _not_safetensors(path, record):
    _rewrite_evidence(path, record, "pgd20", {}, data=b"\xff" * 64)
    return "not a safetensors file (header of"


def _pickle(path, record):
    import io
    buffer = io.BytesIO()
    torch.save({"indices": torch.zeros(1, dtype=torch.long)}, buffer)
    _rewrite_evidence(path, record, "pgd20", {}, data=buffer.getvalue())
    return "not a safetensors file"


def _float64(path, record):
    images = load_file(str(path.parent / record["evidence"]["metrics"]["pgd20"]["path"]))["images"]
    _rewrite_evidence(path, record, "pgd20", {"images": images.double()})
    return "images is torch.float64"


def _oversized(path, record):
    ex = load_file(str(path.parent / record["evidence"]["metrics"]["pgd20"]["path"]))
    pad = torch.zeros(200, 3, 32, 32)  # far more examples than the 32 images attacked
    _rewrite_evidence(path, record, "pgd20", {"images": torch.cat([ex["images"], pad]),
                                               "indices": torch.arange(len(ex["indices"]) + 200)})
    return "more than the"


def _link(path, record):
    entry = record["evidence"]["metrics"]["pgd20"]
    target = path.parent.parent / "elsewhere.safetensors"
    (path.parent / entry["path"]).rename(target)
    (path.parent / entry["path"]).symlink_to(target)
    return "cannot open"


@pytest.mark.parametrize("damage", [_corrupt, _not_safetensors, _pickle, _float64, _oversized, _link])
def test_bad_evidence_files_give_one_error_line(copy, capsys, damage):
    path, record = copy
    expected = damage(path, record)
    assert cli(["verify", str(path), "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err


# ----------------------------------------------------------------------------------------- the Hub
def test_push_uploads_the_evidence_and_verify_checks_the_hub_repo(evaluated, hub, capsys):
    from robust_hub.hub_push import push_to_hub

    root, record, _ = evaluated
    push_to_hub(str(root / "model"), "org/evident", results=[str(root / "out")])
    files = hub.files_at("org/evident")
    ev = record["evidence"]
    for entry in [ev["classifier"], *ev["metrics"].values()]:
        assert files[entry["path"]] == (root / "out" / entry["path"]).read_bytes()
    card = files["README.md"].decode()
    assert "[`evidence/`](evidence/) (`robust-hub verify org/evident`" in card
    assert "prove robust accuracy is at most the number shown, and only stronger attacks\ncan show it is lower." in card
    capsys.readouterr()
    assert cli(["verify", "org/evident", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "org/evident/eval_records/" in out and f"record {record['metrics']['pgd20_acc']:.4f}  bound" in out
    assert "verified: 1 record(s) agree" in out


def test_push_refuses_evidence_that_is_not_what_the_record_names(evaluated, hub, tmp_path):
    from robust_hub.hub_push import push_to_hub

    root, record, _ = evaluated
    shutil.copytree(root / "out", tmp_path / "out")
    (tmp_path / "out" / record["evidence"]["metrics"]["pgd20"]["path"]).write_bytes(b"changed")
    with pytest.raises(robust_hub.errors.RobustHubError, match="not what the record names"):
        push_to_hub(str(root / "model"), "org/refused", results=[str(tmp_path / "out")])
    uploaded = hub.files_at("org/refused") if ("model", "org/refused") in hub.repos else {}
    assert not any(f.startswith("evidence/") for f in uploaded)


def test_verify_runs_on_real_cifar10_images(cifar10_dir, evaluated, tmp_path, capsys):
    root, _, _ = evaluated
    (record,) = evaluate_with_evidence(root / "model", tmp_path / "out", dataset=str(cifar10_dir), n_train=128,
                                       n_test=16, eps_curve=())
    (path,) = (tmp_path / "out").glob("*.json")
    report = _verify(path, record)
    assert report.ok, report.problems
    assert record["evidence"]["metrics"]["pgd20"]["examples"] > 0 and report.checked["pgd20"]["n"] == 16
    assert report.checked["pgd20"]["bound"] == pytest.approx(record["metrics"]["pgd20_acc"])
    # the test set from another source must still be the record's, by its fingerprint
    assert cli(["verify", str(path), "--dataset", str(cifar10_dir), "--device", "cpu"]) == 0
    assert cli(["verify", str(path), "--dataset", "embedded:digits", "--device", "cpu"]) == 2
    assert "not the record's" in capsys.readouterr().err


def test_autoattack_and_its_eps_curve_verify_on_the_images_it_attacked(tmp_path):
    from test_eval_helpers import TinyBackbone, synthetic_split

    from robust_hub.evaluation.loading import wrap_module

    test = synthetic_split(10, "test", 1)
    (record,) = runner.evaluate(TinyBackbone(), protocols="slf", dataset=(synthetic_split(48, "train", 0), test),
                                out_dir=tmp_path, metrics="clean,autoattack", eps=6 / 255, eps_curve=(3 / 255,),
                                eps_curve_attack="autoattack", n_autoattack=6, autoattack_chunk_size=3,
                                protocol_overrides={"epochs": 8, "batch_size": 16, "augment": False, "lr": 0.5},
                                progress=False, print_table=False, device="cpu")
    (path,) = tmp_path.glob("*.json")
    report = _verify(path, record, model_loader=lambda r: wrap_module(TinyBackbone()),
                     dataset_loader=lambda r: runner.SplitData.from_dataset(test, "test"))
    assert report.ok, report.problems
    point = f"eps_curve/autoattack/{3 / 255:.8g}"
    assert set(report.checked) == {"clean", "autoattack", point}
    assert report.checked["autoattack"]["n"] == report.checked[point]["n"] == 6  # AutoAttack's subset, not 10
    assert report.checked["autoattack"]["bound"] == pytest.approx(record["metrics"]["autoattack_acc"])
    assert report.checked["autoattack"]["examples"] > 0
    # the in-memory module cannot be reloaded by itself: one clear error, not a guess
    with pytest.raises(robust_hub.errors.RobustHubError, match="in-memory module"):
        _verify(path, record)


def test_evidence_of_another_number_is_refused_by_its_metadata(copy):
    path, record = copy
    metrics = record["evidence"]["metrics"]
    metrics["pgd20"] = {**metrics[f"eps_curve/pgd20/{CURVE:.8g}"], "attack": "pgd20", "eps": EPS}
    path.write_text(json.dumps(record))
    report = _verify(path, record)
    assert not report.ok
    assert any(p.startswith("pgd20: evidence/") and p.endswith("its metadata (metric, eps) is not this record's")
               for p in report.problems), report.problems


def test_push_uploads_a_leaderboard_results_evidence_from_its_store(evaluated, hub, tmp_path):
    from leaderboard_helpers import KEY, file_result

    from robust_hub.hub_push import push_to_hub
    from robust_hub.leaderboard.store import LocalStore

    root, record, _ = evaluated
    commit = push_to_hub(str(root / "model"), "org/boarded")
    store = LocalStore(tmp_path / "store")
    result = {**record, "model": {**record["model"], "id": "org/boarded", "revision": commit}}
    file_result(store, result)
    files = [record["evidence"]["classifier"], *record["evidence"]["metrics"].values()]
    for entry in files[1:]:  # the classifier is missing from the store: refused before anything is uploaded
        store.create(entry["path"], (root / "out" / entry["path"]).read_bytes())
    (tmp_path / "key").write_bytes(KEY)
    push = dict(results=[str(tmp_path / "store")], key_file=str(tmp_path / "key"))
    with pytest.raises(robust_hub.errors.RobustHubError, match="in none of the stores given"):
        push_to_hub(str(root / "model"), "org/boarded", **push)
    assert not any(f.startswith("evidence/") for f in hub.files_at("org/boarded"))
    store.create(files[0]["path"], (root / "out" / files[0]["path"]).read_bytes())
    push_to_hub(str(root / "model"), "org/boarded", **push)
    uploaded = hub.files_at("org/boarded")
    assert all(uploaded[e["path"]] == (root / "out" / e["path"]).read_bytes() for e in files)


def test_an_evidence_link_in_out_is_refused_before_any_work(evaluated, tmp_path, capsys):
    root, _, _ = evaluated
    shutil.copytree(root / "out", tmp_path / "out")
    shutil.rmtree(tmp_path / "out" / "evidence")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "evidence").symlink_to(tmp_path / "elsewhere")
    assert cli(["eval", str(root / "model"), "--protocols", "alf", "--dataset", "embedded:digits", "--n-test", "4",
                "--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu"]) == 2
    assert "symbolic link" in capsys.readouterr().err and not any((tmp_path / "elsewhere").iterdir())
    assert cli(["verify", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert "is a symbolic link; evidence is read only from inside" in capsys.readouterr().err


def test_a_content_address_is_written_once_and_never_replaced(tmp_path):
    from robust_hub.evaluation.evidence import _write_content_addressed

    entry = _write_content_addressed(tmp_path, b"evidence bytes")
    assert entry == {"path": f"evidence/{hashlib.sha256(b'evidence bytes').hexdigest()}.safetensors",
                     "sha256": hashlib.sha256(b"evidence bytes").hexdigest(), "bytes": 14}
    target = tmp_path / Path(entry["path"]).name
    assert _write_content_addressed(tmp_path, b"evidence bytes") == entry  # the same content: kept as it is
    target.write_bytes(b"someone else's file")
    with pytest.raises(robust_hub.errors.RobustHubError, match="does not hold what its name says"):
        _write_content_addressed(tmp_path, b"evidence bytes")
    assert target.read_bytes() == b"someone else's file" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_each_way_an_example_can_fail_to_break_its_image_is_named():
    """invalid_examples on hand-made examples: one valid, and one for each reason it names."""
    from robust_hub.evaluation.evidence import AdversarialSet, invalid_examples

    eps = 8 / 255

    class FirstPixelAbove(torch.nn.Module):  # class 1 when the first pixel is above 0.5, else class 0
        def forward(self, x):
            above = (x[:, 0, 0, 0] > 0.5).float()
            return torch.stack([1 - above, above], dim=1)

    x = torch.full((5, 3, 4, 4), 0.6)
    x[1], x[4] = 1.0, 0.52
    labels = torch.zeros(5, dtype=torch.long)
    adv = x.clone()
    adv[0] += eps / 2  # classified 1: breaks image 0
    adv[1] += eps / 2  # inside the ball, above 1
    adv[2] = float("nan")
    adv[3] += 2 * eps
    adv[4] = 0.5  # within eps of 0.52, classified 0, which is right
    out = invalid_examples(FirstPixelAbove(), x, labels, AdversarialSet(torch.arange(5), adv), eps, "linf", "cpu")
    assert out == {1: "the example leaves [0,1]", 2: "the example is not finite",
                   3: "outside the eps-ball (16/255 > 8/255, linf)", 4: "the model classifies the example correctly"}
