"""The main job's closing probe: a converged linear probe, on the held-out split, attacked as the suite attacks."""

from pathlib import Path

import pytest
import torch

import robust_hub
from robust_hub.config import load_config
from robust_hub.data import load_image_dataset
from robust_hub.evaluation import runner
from robust_hub.training.probe import fit_linear_probe, probe_pretraining

REPO = Path(__file__).resolve().parents[1]


def test_the_probe_fits_what_scikit_learn_fits(one_torch_thread):
    from sklearn.linear_model import LogisticRegression

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=generator) * 1.5
    labels = torch.arange(300) % 3
    features = centres[labels] + torch.randn(300, 20, generator=generator)
    head = fit_linear_probe(features, labels, 3, seed=0)
    # the same objective on the same standardised features: mean cross-entropy + 1e-3 |W|^2 is C = 1 / (2e-3 n)
    mean, std = features.mean(0), features.std(0)
    standardised = ((features - mean) / std).numpy()
    reference = LogisticRegression(C=1 / (2e-3 * 300), tol=1e-10, max_iter=10000).fit(standardised, labels.numpy())
    assert (head(features).argmax(1) == torch.from_numpy(reference.predict(standardised))).all()
    assert torch.allclose(head.weight * std, torch.from_numpy(reference.coef_).float(), atol=2e-3)


def test_probe_scores_held_out_images_clean_and_under_the_suites_pgd20_in_eval_mode(tmp_path, monkeypatch,
                                                                                   one_torch_thread):
    config = load_config(REPO / "configs" / "offline.yaml")  # 32x32, the input size the saved model declares
    torch.manual_seed(3)
    robust_hub.create_backbone("robust_resnet_tiny", proj_layers=3).save_pretrained(str(tmp_path / "model"))
    attacked = []

    def fake_pgd_accuracy(model, data, attack, **kwargs):
        attacked.append((model.training, model.encoder.training, attack, data.split, len(data.labels)))
        return 0.25

    monkeypatch.setattr(runner, "pgd_accuracy", fake_pgd_accuracy)
    report = probe_pretraining(tmp_path / "model", config)
    train = load_image_dataset("embedded:digits", "train", image_size=32)
    test = load_image_dataset("embedded:digits", "test", image_size=32)
    assert (report.n_train, report.n_test) == (len(train), len(test)) == (1438, 359)
    assert len(attacked) == 4  # two backbones, each at 2/255 and 8/255
    for (training, encoder_training, attack, split, n), eps in zip(attacked, [2 / 255, 8 / 255] * 2):
        assert not training and not encoder_training and split == "test" and n == 359
        assert (attack.eps, attack.alpha, attack.steps, attack.random_start, attack.norm) == (eps, eps / 4, 20, True, "linf")

    # the pre-trained row, recomputed by hand: features of the saved model (its default route), probe, argmax
    model = robust_hub.from_pretrained(str(tmp_path / "model")).eval()
    with torch.no_grad():
        head = fit_linear_probe(model(train.images.float() / 255), train.labels, 10, seed=config.train.seed)
        expected = (head(model(test.images.float() / 255)).argmax(1) == test.labels).float().mean().item()
    clean, *robust = report.rows["pre-trained (ACL)"]
    assert clean == pytest.approx(expected, abs=1.01 / 359) and robust == [0.25, 0.25]  # at most one image on a knife edge
    assert list(report.rows) == ["random initialisation", "pre-trained (ACL)"]
    assert "359 held-out test images" in report.lines()[0]
