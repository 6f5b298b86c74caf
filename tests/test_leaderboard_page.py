"""The built page in a real browser: headless Chromium sorts and filters it, and the visible rows are checked.

The screenshot is kept under tests/artifacts/ (git-ignored) as leaderboard.png.
"""

from pathlib import Path

import pytest

from robust_hub.leaderboard.render import build_site
from robust_hub.leaderboard.store import LocalStore

from browser import Browser, chromium_or_skip
from leaderboard_helpers import KEY, file_result, record

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
VISIBLE_MODELS = ("Array.from(document.querySelectorAll('#t1-table tbody tr'))"
                  ".filter(r => !r.hidden).map(r => r.dataset.model)")


@pytest.fixture
def browser():
    b = Browser(chromium_or_skip())
    yield b
    b.close()


def test_without_chromium_the_page_test_skips_naming_the_install_and_ci_fails(monkeypatch):
    import browser as browser_module

    monkeypatch.setattr(browser_module, "chromium_path", lambda: None)
    monkeypatch.delenv("ROBUST_HUB_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        chromium_or_skip()
    monkeypatch.setenv("ROBUST_HUB_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="ROBUST_HUB_REQUIRE_BROWSER=1 requires it"):
        chromium_or_skip()


def test_page_sorts_filters_and_shows_flags_in_chromium(tmp_path, browser):
    store = LocalStore(tmp_path / "store")
    rows = {"org/alpha": (0.80, 0.46, 0.42), "org/beta": (0.75, 0.50, 0.48), "org/gamma": (0.90, 0.35, 0.31)}
    for i, (model, (clean, pgd, aa)) in enumerate(rows.items()):
        file_result(store, record(model, str(i + 1) * 40, clean=clean, pgd=pgd, aa=aa))
    file_result(store, record("org/masked", "9" * 40, clean=0.95, pgd=None, aa=None,
                              flags=["masked_gradients", "robust_acc_withheld", "<b>odd</b>"]))
    build_site(store, KEY, tmp_path / "site", endpoint="https://huggingface.co")
    browser.open((tmp_path / "site" / "index.html").as_uri())

    # as built: ranked by AutoAttack, the flagged model last and unranked (an odd flag shown as text, not markup)
    assert browser.eval(VISIBLE_MODELS) == ["org/beta", "org/alpha", "org/gamma", "org/masked"]
    assert browser.eval("document.querySelector('tr.unranked td').textContent") == "unranked"
    flags = browser.eval("Array.from(document.querySelectorAll('tr.unranked .flag')).map(f => f.textContent)")
    assert "masked_gradients" in flags and "<b>odd</b>" in flags
    assert browser.eval("document.querySelectorAll('tr.unranked .flag b').length") == 0

    # sort by clean accuracy (descending, then ascending); empty cells always last
    browser.eval("document.querySelectorAll('#t1-table th')[3].click()")
    assert browser.eval(VISIBLE_MODELS) == ["org/masked", "org/gamma", "org/alpha", "org/beta"]
    browser.eval("document.querySelectorAll('#t1-table th')[3].click()")
    assert browser.eval(VISIBLE_MODELS) == ["org/beta", "org/alpha", "org/gamma", "org/masked"]
    # sort by AutoAttack ascending: the withheld one stays at the bottom
    browser.eval("document.querySelectorAll('#t1-table th')[5].click()")
    browser.eval("document.querySelectorAll('#t1-table th')[5].click()")
    assert browser.eval(VISIBLE_MODELS) == ["org/gamma", "org/alpha", "org/beta", "org/masked"]

    # filter: typing fires the input event the page listens to
    browser.eval("var f = document.querySelector('input.filter'); f.value = 'a'; "
                 "f.dispatchEvent(new Event('input'))")
    assert browser.eval(VISIBLE_MODELS) == ["org/gamma", "org/alpha", "org/beta", "org/masked"]
    browser.eval("var f = document.querySelector('input.filter'); f.value = 'MASKED_grad'; "
                 "f.dispatchEvent(new Event('input'))")
    assert browser.eval(VISIBLE_MODELS) == ["org/masked"]
    browser.eval("var f = document.querySelector('input.filter'); f.value = 'alp'; "
                 "f.dispatchEvent(new Event('input'))")
    assert browser.eval(VISIBLE_MODELS) == ["org/alpha"]
    link = browser.eval("document.querySelector('tr:not([hidden]) td:nth-child(3) a').href")
    assert link == "https://huggingface.co/org/alpha/commit/" + "1" * 40
    browser.eval("var f = document.querySelector('input.filter'); f.value = ''; f.dispatchEvent(new Event('input'))")
    assert len(browser.eval(VISIBLE_MODELS)) == 4

    ARTIFACTS.mkdir(exist_ok=True)
    browser.screenshot(ARTIFACTS / "leaderboard.png")
    assert (ARTIFACTS / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_shows_a_re_verified_row_and_a_row_whose_evidence_failed_in_chromium(tmp_path, browser):
    from robust_hub.leaderboard.reverify import EvidenceChecker

    from test_leaderboard_evidence import FakeVerifier, put_evidence, with_evidence

    store = LocalStore(tmp_path / "store")
    file_result(store, with_evidence(record("org/honest", "1" * 40, aa=0.40), b"head 1", b"examples 1"))
    file_result(store, with_evidence(record("org/edited", "2" * 40, aa=0.45), b"head 2", b"examples 2"))
    file_result(store, record("org/older", "3" * 40, pgd=0.32, aa=0.30))
    put_evidence(store, b"head 1", b"examples 1", b"head 2", b"examples 2")
    check = EvidenceChecker(store, {}, verifier=FakeVerifier(bad={"org/edited": [4, 12]}), cache_dir=tmp_path / "c")
    build_site(store, KEY, tmp_path / "site", endpoint="https://huggingface.co", check_evidence=check)
    browser.open((tmp_path / "site" / "index.html").as_uri())

    # the edited row loses its rank although its AutoAttack number is the highest
    assert browser.eval(VISIBLE_MODELS) == ["org/honest", "org/older", "org/edited"]
    evidence = browser.eval("Object.fromEntries(Array.from(document.querySelectorAll('#t1-table tbody tr'))"
                            ".map(r => [r.dataset.model, [r.querySelector('td.evidence').textContent, "
                            "r.querySelector('td.evidence').className, getComputedStyle(r.querySelector('td.evidence'))"
                            ".color]]))")
    text, cls, colour = evidence["org/honest"]
    assert text.startswith("re-verified 20") and "evidence-verified" in cls and colour == "rgb(17, 99, 41)"
    assert evidence["org/edited"][0] == "evidence failed: images 4, 12"
    assert evidence["org/edited"][2] == "rgb(164, 14, 38)"  # red, also on the unranked row's grey
    assert evidence["org/older"][0] == "no evidence"
    headers = browser.eval("Array.from(document.querySelectorAll('#t1-table th')).map(h => h.textContent)")
    assert headers[-1] == "evidence"
    title = browser.eval("document.querySelector('tr[data-model=\"org/edited\"] td.evidence').title")
    assert title.splitlines()[0] == "pgd20: image 4: outside the eps-ball (9/255 > 8/255, linf)"
    flags = browser.eval("Array.from(document.querySelectorAll('tr[data-model=\"org/edited\"] .flag'))"
                         ".map(f => f.textContent)")
    assert flags == ["evidence failed"]
    ARTIFACTS.mkdir(exist_ok=True)
    browser.screenshot(ARTIFACTS / "leaderboard-evidence.png")
    # the filter finds rows by what their evidence says
    browser.eval("var f = document.querySelector('input.filter'); f.value = 'evidence failed'; "
                 "f.dispatchEvent(new Event('input'))")
    assert browser.eval(VISIBLE_MODELS) == ["org/edited"]
