"""AutoAttack through the reference code: equality with a direct call, eps extremes, resume, flags."""

import json

import pytest
import torch
from test_eval_helpers import RoundingBackbone, TinyBackbone, synthetic_split, trained_classifier

import robust_hub.evaluation.autoattack_runner as aar
from robust_hub.errors import RobustHubError
from robust_hub.evaluation.autoattack_runner import flags_from_messages, run_autoattack


@pytest.fixture(scope="module")
def task():
    model = trained_classifier(TinyBackbone(), synthetic_split(64, "train", 0))
    test = synthetic_split(8, "test", 1)
    return model, test.images.float() / 255, test.labels


def test_matches_a_direct_pyautoattack_call_with_the_same_seed(task, tmp_path):
    from pyautoattack import AutoAttack

    model, x, y = task
    eps = 27 / 255  # partly robust: some points fall, some survive every attack
    ours = run_autoattack(model, x, y, eps=eps, seed=3, batch_size=16, chunk_size=16,
                          state_dir=tmp_path / "aa", progress=False)
    direct = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=3)
    _, y_adv = direct.run_standard_evaluation(x, y, batch_size=16)
    expected = (y_adv == y).float().mean().item()
    assert ours.robust == (y_adv == y).tolist()
    assert ours.robust_acc == pytest.approx(expected)
    assert 0 < expected < 1, "the test model should be neither fully robust nor fully broken at this eps"
    assert ours.trusted and "masked_gradients" not in ours.flags


def test_eps_zero_equals_clean_accuracy(task):
    model, x, y = task
    x, y = x[:6], y[:6]
    y = y.clone()
    y[0] = (y[0] + 1) % 10  # one wrong label so clean accuracy is not trivially 1
    res = run_autoattack(model, x, y, eps=0.0, seed=0, progress=False)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert res.clean_acc == pytest.approx(clean)
    assert res.robust_acc == pytest.approx(clean)


def test_huge_eps_drives_accuracy_to_chance(task):
    model, x, y = task
    res = run_autoattack(model, x, y, eps=1.0, seed=0, progress=False)
    assert res.clean_acc > 0.9
    assert res.robust_acc <= 0.1 + 0.05


def test_resume_skips_finished_chunks(task, tmp_path, monkeypatch):
    model, x, y = task
    state = tmp_path / "state"
    first = run_autoattack(model, x, y, eps=1.0, seed=0, chunk_size=4, state_dir=state, progress=False)
    assert sorted(p.name for p in state.iterdir()) == ["chunk-000000000.safetensors", "chunk-000000004.safetensors"]
    assert first.adversarial.indices.tolist() == [i for i in range(8) if first.clean[i] and not first.robust[i]]
    # drop one chunk as if the run had stopped there; only that chunk may run again
    (state / "chunk-000000004.safetensors").unlink()
    calls = []
    real = aar._attack_chunk
    monkeypatch.setattr(aar, "_attack_chunk", lambda m, xc, yc, **kw: calls.append(len(xc)) or real(m, xc, yc, **kw))
    again = run_autoattack(model, x, y, eps=1.0, seed=0, chunk_size=4, state_dir=state, progress=False)
    assert calls == [4]
    assert again.robust == first.robust
    assert torch.equal(again.adversarial.indices, first.adversarial.indices)
    assert torch.equal(again.adversarial.images, first.adversarial.images)
    assert not [p for p in state.iterdir() if not p.name.startswith("chunk-")]


def test_state_of_another_run_or_damaged_or_old_is_refused(task, tmp_path):
    model, x, y = task
    state = tmp_path / "state"
    run_autoattack(model, x[:4], y[:4], eps=1.0, seed=0, state_dir=state, progress=False)
    with pytest.raises(RobustHubError, match="different"):
        run_autoattack(model, x[:4], y[:4], eps=0.5, seed=0, state_dir=state, progress=False)
    (state / "chunk-000000000.safetensors").write_bytes(b"{not safetensors")
    with pytest.raises(RobustHubError, match="chunk-000000000.safetensors is not a readable"):
        run_autoattack(model, x[:4], y[:4], eps=1.0, seed=0, state_dir=state, progress=False)
    old = tmp_path / "old.autoattack.json"
    old.write_text(json.dumps({"schema": "robust-hub-autoattack-state/1", "chunks": {}}))
    with pytest.raises(RobustHubError, match="older robust-hub.*delete it"):
        run_autoattack(model, x[:4], y[:4], eps=1.0, seed=0, state_dir=old, progress=False)


def test_masked_gradients_are_flagged_and_untrusted():
    train, test = synthetic_split(64, "train", 0), synthetic_split(2, "test", 1)
    model = trained_classifier(RoundingBackbone(), train)
    res = run_autoattack(model, test.images.float() / 255, test.labels, eps=8 / 255, seed=0, progress=False)
    assert "zero_gradients" in res.flags  # the reference code's own check
    assert "masked_gradients" in res.flags and not res.trusted
    assert res.masked_fraction == 1.0


def test_reference_warning_messages_map_to_flags():
    msgs = ["there are 3 points with zero gradient! This might lead to unreliable evaluation",
            "it seems to be a randomized defense! Please use version=\"rand\".",
            "Square Attack has decreased the robust accuracy of 2.00%."]
    assert flags_from_messages(msgs) == ["randomized_defense", "square_beats_white_box", "zero_gradients"]
