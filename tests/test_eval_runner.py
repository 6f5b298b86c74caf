"""The whole suite end to end: protocols, metrics, records, resume, masked models, CLI."""


import pytest
import torch
from test_eval_helpers import RoundingBackbone, TinyBackbone, synthetic_split
from test_eval_loading import save_tiny_hf_resnet, save_tiny_timm

import robust_hub.evaluation.runner as runner
from robust_hub.errors import RobustHubError
from robust_hub.evaluation import evaluate, load_records
from robust_hub.evaluation.cli import main as eval_main

FAST = {"epochs": 1, "batch_size": 16, "augment": False}


@pytest.fixture(scope="module")
def data():
    return synthetic_split(48, "train", 0), synthetic_split(24, "test", 1)


def _run(model, data, out, **kw):
    opts = dict(protocols="slf", dataset=data, out_dir=out, metrics="clean,pgd20", protocol_overrides=FAST,
                progress=False, print_table=False, device="cpu")
    opts.update(kw)
    return evaluate(model, **opts)


def test_all_protocols_and_metrics_on_a_tiny_model(data, tmp_path, capsys):
    recs = _run(TinyBackbone(), data, tmp_path, protocols="slf,alf,aff", metrics="clean,pgd20,autoattack,c10c",
                c10c_generate=True, eps=0.5, protocol_overrides={**FAST, "slf.lr": 0.5, "alf.lr": 0.5},
                print_table=True)
    assert [r["protocol"]["name"] for r in recs] == ["slf", "alf", "aff"]
    assert len(load_records(tmp_path)) == 3
    for r in recs:
        m = r["metrics"]
        assert 0 <= m["autoattack_acc"] <= m["clean_acc"]
        assert m["c10c"]["generated"] and "generated_corruptions" in r["flags"]
        assert r["protocol"]["settings"]["epochs"] == 1 and r["seeds"] == {"finetune": 0, "attack": 0}
        assert r["threat"] == {"norm": "linf", "eps": 0.5}
        assert set(r["wall_time_s"]) >= {"finetune", "clean", "pgd20", "autoattack", "c10c", "total"}
    aff = recs[2]["protocol"]["settings"]
    assert aff["trades_beta"] == 6.0 and aff["lr"] == 0.1 and aff["milestones"] == [15, 20]
    assert recs[1]["protocol"]["settings"]["train_attack"]["steps"] == 10
    table = capsys.readouterr().out
    assert "slf" in table and "aff" in table and "generated" in table


def test_eps_zero_and_huge_eps_through_the_suite(data, tmp_path):
    (rec,) = _run(TinyBackbone(), data, tmp_path, eps=0.0, eps_curve=(0.0, 1.0),
                  protocol_overrides={**FAST, "epochs": 5, "lr": 0.5})
    m = rec["metrics"]
    assert m["clean_acc"] > 0.5
    assert m["pgd20_acc"] == m["clean_acc"]
    assert m["eps_curve"]["pgd20"]["0"] == m["clean_acc"]
    assert m["eps_curve"]["pgd20"]["1"] <= 0.1 + 0.05


def test_results_are_reproducible_and_runs_resume(data, tmp_path, monkeypatch):
    (first,) = _run(TinyBackbone(), data, tmp_path / "a")
    (again,) = _run(TinyBackbone(), data, tmp_path / "b")
    assert first["metrics"] == again["metrics"]
    # a rerun into the same directory reuses the record without finetuning or attacking
    monkeypatch.setattr(runner, "finetune", lambda *a, **k: pytest.fail("finetuned again"))
    monkeypatch.setattr(runner, "pgd_accuracy", lambda *a, **k: pytest.fail("attacked again"))
    (resumed,) = _run(TinyBackbone(), data, tmp_path / "a")
    assert resumed == first


def test_resume_after_finetuning_reuses_the_classifier(data, tmp_path, monkeypatch):
    real = runner._measure
    monkeypatch.setattr(runner, "_measure", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        _run(TinyBackbone(), data, tmp_path)
    assert list((tmp_path / "state").glob("*.classifier.safetensors")) and not load_records(tmp_path)
    monkeypatch.setattr(runner, "_measure", real)
    monkeypatch.setattr(runner, "finetune", lambda *a, **k: pytest.fail("finetuned again"))
    (rec,) = _run(TinyBackbone(), data, tmp_path)
    assert rec["wall_time_s"]["finetune"] == 0.0


def test_other_settings_in_the_same_directory_are_refused(data, tmp_path):
    from robust_hub.errors import RobustHubError

    _run(TinyBackbone(), data, tmp_path)
    with pytest.raises(RobustHubError, match="other settings"):
        _run(TinyBackbone(), data, tmp_path, protocol_overrides={**FAST, "lr": 0.02})


def test_masked_gradient_model_is_flagged_not_reported_robust(data, tmp_path, capsys):
    (rec,) = _run(RoundingBackbone(), data, tmp_path, metrics="clean,pgd20,autoattack",
                  protocol_overrides={**FAST, "epochs": 5, "lr": 0.5}, print_table=True)
    assert rec["metrics"]["clean_acc"] > 0.3
    assert rec["metrics"]["pgd20_acc"] is None and rec["metrics"]["autoattack_acc"] is None
    assert {"masked_gradients", "robust_acc_withheld"} <= set(rec["flags"])
    assert "withheld" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["timm", "transformers"])
def test_hub_libraries_go_through_the_whole_suite(kind, data, tmp_path):
    path = tmp_path / kind
    (save_tiny_timm if kind == "timm" else save_tiny_hf_resnet)(path)
    recs = _run(str(path), data, tmp_path / "out", protocols="slf,alf,aff", metrics="clean,pgd20,autoattack",
                eps=1.0, protocol_overrides={**FAST, "train_attack.steps": 2}, n_train=32, n_test=8)
    assert [r["model"]["library"] for r in recs] == [kind] * 3
    assert all(r["model"]["revision"].startswith("local-sha256:") for r in recs)
    assert all(r["metrics"]["autoattack_acc"] <= r["metrics"]["clean_acc"] for r in recs)
    assert recs[0]["dataset"]["n_train"] == 32 and recs[0]["dataset"]["n_test"] == 8


def _cli(argv):
    return eval_main(argv)


def test_cli_with_the_data_layer_and_a_robust_hub_backbone(tmp_path, capsys):
    import robust_hub

    robust_hub.create_backbone("robust_resnet_tiny").save_pretrained(tmp_path / "rh")
    code = _cli([str(tmp_path / "rh"), "--protocols", "slf", "--dataset", "embedded:digits", "--out",
                 str(tmp_path / "out"), "--n-train", "32", "--n-test", "16", "--epochs", "1", "--set", "augment=false",
                 "--metrics", "clean,pgd20,c10c", "--c10c-generate", "--eps", "8/255", "--no-progress", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert "slf" in out and "digits" in out
    (rec,) = load_records(tmp_path / "out")
    assert rec.model.library == "robust_hub" and rec.dataset.source == "embedded:digits"
    assert rec.threat.eps == pytest.approx(8 / 255)


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
    assert _cli([str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert _cli(["x", "--out", str(tmp_path / "o"), "--protocols", "knn"]) == 2
    assert _cli(["x", "--out", str(tmp_path / "o"), "--set", "slf.nonsense=1"]) == 2


def test_generated_corruption_set_honours_n_per_severity(data, tmp_path):
    (rec,) = _run(TinyBackbone(), data, tmp_path, metrics="clean,c10c", c10c_generate=True, c10c_n_per_severity=10)
    assert rec["metrics"]["c10c"]["n_per_severity"] == 10


def test_linf_eps_above_one_is_refused_before_any_work(data, tmp_path):
    with pytest.raises(RobustHubError, match="L-inf eps"):
        _run(TinyBackbone(), data, tmp_path, eps=9.0)
    assert not list(tmp_path.glob("*.json"))


class _OffGridIsRight(torch.nn.Module):
    """Predicts class 1 (wrong, every label is 0) on images on the 1/255 grid and class 0 (right) off it."""

    def forward(self, x):
        off_grid = (x * 255 - (x * 255).round()).abs().flatten(1).sum(1)
        return torch.stack([off_grid, torch.full_like(off_grid, 0.5)], dim=1)


def test_pgd_counts_a_misclassified_image_broken_even_when_its_random_start_is_right():
    from robust_hub.evaluation.attacks import PGDConfig

    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    data = runner.SplitData(x, torch.zeros(6, dtype=torch.long), 2, "mem", "test", "fp")
    model = _OffGridIsRight()
    random_start_only = PGDConfig(eps=8 / 255, alpha=0.0, steps=1)
    with torch.no_grad():  # the attack alone would call every image right: its start is off the grid
        assert (model(x.float() / 255 + 1 / 510).argmax(1) == 0).all() and (model(x.float() / 255).argmax(1) == 1).all()
    correct, examples = runner.pgd_results(model, data, random_start_only, progress=False)
    assert correct == [False] * 6
    assert len(examples.indices) == 0  # nothing to store: the test images themselves prove it
