"""The leaderboard as a rendering of the store: one static HTML page (self-contained, works offline) and Markdown.

One table per protocol and task (dataset, threat model, evaluation budget). Rows are the verified results; a
row whose score the trust verdict does not accept is shown with its reasons and no rank. What model cards claim
for themselves is listed apart, marked self-reported. Malformed requests and rejected result files are listed
with their reasons, so tampering is visible rather than silently dropped.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from robust_hub.evaluation.measured_on import measured_on
from robust_hub.leaderboard.requests import RequestQueue, is_local
from robust_hub.leaderboard.results import VerifiedResult, load_results
from robust_hub.leaderboard.reverify import NO_EVIDENCE, EvidenceChecker, EvidenceStatus
from robust_hub.leaderboard.store import Store
from robust_hub.leaderboard.trust import ranking_score, verdict

TEMPLATE = Path(__file__).with_name("page.html")
PROTOCOL_TITLES = {"slf": "SLF (standard linear finetuning)", "alf": "ALF (adversarial linear finetuning)",
                   "aff": "AFF (adversarial full finetuning, TRADES)"}


@dataclass
class Row:
    rank: int | None
    model_id: str
    commit: str
    clean: float | None
    pgd20: float | None
    autoattack: float | None
    c10c: float | None
    flags: list[str]
    unranked_because: list[str]
    evidence: EvidenceStatus = NO_EVIDENCE

    @property
    def on_hub(self) -> bool:
        """A Hub model (pinned to a commit) rather than a local directory (pinned to its content hash)."""
        return not is_local(self.commit)

    @property
    def short_commit(self) -> str:
        return self.commit[:7] if self.on_hub else "sha256 " + self.commit.removeprefix("local-sha256:")[:7]


@dataclass
class Table:
    id: str
    title: str
    subtitle: str
    rows: list[Row] = field(default_factory=list)


@dataclass
class Board:
    tables: list[Table]
    self_reported: list[dict]
    requests: list[dict]
    rejected: dict[str, str]
    endpoint: str
    built_at: str


def _threat(record: dict) -> str:
    t = record["threat"]
    return f"L-inf {t['eps'] * 255:g}/255" if t["norm"] == "linf" else f"L2 {t['eps']:g}"


def _task(record: dict) -> tuple[tuple, str, str]:
    settings, dataset = record["protocol"]["settings"], record["dataset"]
    budget = {k: settings.get(k) for k in sorted(settings) if k != "eval"}
    budget["eval"] = settings.get("eval")
    budget.update(n_train=dataset["n_train"], n_test=dataset["n_test"], test_fingerprint=dataset["fingerprint"])
    digest = hashlib.sha256(json.dumps(budget, sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = record["protocol"]["name"]
    scope = measured_on(record)  # the same label the model card and model-index carry
    title = (f"{PROTOCOL_TITLES.get(name, name)} · {Path(dataset['source']).name} · {_threat(record)}"
             + ("" if scope.benchmark else " · subset or shortened protocol, not the benchmark's numbers"))
    subtitle = (f"{dataset['n_train']} finetuning images, {dataset['n_test']} test images, "
                f"epochs {settings.get('epochs', '?')}; settings {digest}; measured on {scope.text()}")
    return (name, dataset["source"], record["threat"]["norm"], record["threat"]["eps"], digest), title, subtitle


EvidenceCheck = Callable[[VerifiedResult], EvidenceStatus]


def build_board(store: Store, key: bytes, endpoint: str, check_evidence: EvidenceCheck | None = None) -> Board:
    """The board of the store's verified results; each result's evidence is re-verified by ``check_evidence``
    (default: :class:`EvidenceChecker` on this store), and a row whose evidence failed is not ranked."""
    results, rejected = load_results(store, key)
    requests, ignored_events = RequestQueue(store, key).all()
    rejected.update(ignored_events)
    check_evidence = check_evidence or EvidenceChecker(store, {q.id: q for q in requests})
    tables: dict[tuple, Table] = {}
    for result in results:
        r = result.record
        task, title, subtitle = _task(r)
        table = tables.setdefault(task, Table(f"t{len(tables) + 1}", title, subtitle))
        m = r["metrics"]
        ok, reasons = verdict(r)
        evidence = check_evidence(result)
        unranked_because = ([] if ok else reasons) + (["evidence failed"] if evidence.state == "failed" else [])
        table.rows.append(Row(None, r["model"]["id"], r["model"]["revision"], m.get("clean_acc"), m.get("pgd20_acc"),
                              m.get("autoattack_acc"), (m.get("c10c") or {}).get("mean"), list(r["flags"]),
                              unranked_because, evidence))
    for table in tables.values():
        ranked = sorted((row for row in table.rows if not row.unranked_because),
                        key=lambda row: (-row.autoattack, -(row.clean or 0), row.model_id))
        for i, row in enumerate(ranked):  # competition ranking: equal AutoAttack, equal rank (1, 1, 3)
            row.rank = ranked[i - 1].rank if i and row.autoattack == ranked[i - 1].autoattack else i + 1
        table.rows = ranked + sorted((row for row in table.rows if row.unranked_because), key=lambda row: row.model_id)
    claims = [{"model_id": q.model_id, "commit": q.commit, **claim}
              for q in requests if q.state == "FINISHED" for claim in q.event.get("self_reported", [])]
    listed = [{"id": q.id, "model_id": q.model_id, "commit": q.commit, "state": q.state, "reason": q.reason}
              for q in requests]
    return Board(sorted(tables.values(), key=lambda t: t.title), claims, sorted(listed, key=lambda q: q["id"]),
                 rejected, endpoint.rstrip("/"), datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


EVIDENCE_NOTE = ("The evidence column says whether this build re-checked the row's adversarial examples: each inside "
                 "the threat model around its test image and misclassified by the model at its commit, together "
                 "proving robust accuracy is at most the row's number (only stronger attacks can show it is lower).")


def render_html(board: Board) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["pct"] = _pct
    return env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(board=board, evidence_note=EVIDENCE_NOTE)


MARKDOWN_SYNTAX = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def cell(text: Any) -> str:
    """A store string as Markdown text: tags disarmed as the page does, Markdown syntax and line breaks too.

    Quotes stay as they are: outside a tag they cannot start an attribute, and the `<` of any tag is escaped.
    """
    return MARKDOWN_SYNTAX.sub(r"\\\1", html.escape(" ".join(str(text).split()), quote=False))


def render_markdown(board: Board) -> str:
    out = ["# robust-hub leaderboard", "",
           f"Verified by the leaderboard's own runs; built {board.built_at}. Scores in %. "
           "Unranked rows have scores the leaderboard cannot trust (reasons given). "
           f"{EVIDENCE_NOTE}", ""]
    for table in board.tables:
        out += [f"## {cell(table.title)}", "", cell(table.subtitle), "",
                "| rank | model | commit | clean | PGD-20 | AutoAttack | CIFAR-10-C | flags | evidence |",
                "|---|---|---|---|---|---|---|---|---|"]
        for row in table.rows:
            rank = str(row.rank) if row.rank else "unranked (" + ", ".join(row.unranked_because) + ")"
            url = f"{board.endpoint}/{quote(row.model_id)}"
            link = f"[{cell(row.model_id)}]({url})" if row.on_hub else f"{cell(row.model_id)} (local)"
            commit = f"[{cell(row.commit[:7])}]({url}/commit/{quote(row.commit)})" if row.on_hub else \
                cell(row.short_commit)
            out.append(f"| {cell(rank)} | {link} | {commit} | {_pct(row.clean)} | {_pct(row.pgd20)} | "
                       f"{_pct(row.autoattack)} | {_pct(row.c10c)} | {cell(', '.join(row.flags) or '-')} | "
                       f"{cell(row.evidence.text())} |")
        out.append("")
    if board.self_reported:
        out += ["## Self-reported (from model cards, not verified)", "", "| model | commit | metric | dataset | value |",
                "|---|---|---|---|---|"]
        out += [f"| {cell(c['model_id'])} | {cell(c['commit'][:7])} | {cell(c['metric'])} | {cell(c['dataset'])} | "
                f"{c['value']:g} |" for c in board.self_reported]
        out.append("")
    return "\n".join(out)


SITE_KIND = "leaderboard-site"
SITE_FILES = ["index.html", "leaderboard.md"]


def check_site(site_dir: str | Path, overwrite: bool = False) -> None:
    """The page may go to a new or empty directory, an earlier page, or (``--overwrite``) anywhere else."""
    from robust_hub.io import claim_directory

    claim_directory(site_dir, SITE_KIND, overwrite=overwrite, what="--site")


def build_site(store: Store, key: bytes, site_dir: str | Path, endpoint: str | None = None,
               overwrite: bool = False, check_evidence: EvidenceCheck | None = None) -> Board:
    """Write ``index.html`` and ``leaderboard.md`` to ``site_dir`` (atomically) from the store's records, their
    evidence re-verified (see :func:`build_board`)."""
    from robust_hub.io import read_marker, write_marker, write_text_atomic

    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    site = Path(site_dir)
    check_site(site, overwrite)
    board = build_board(store, key, endpoint, check_evidence)
    site.mkdir(parents=True, exist_ok=True)
    if read_marker(site) is None:
        write_marker(site, SITE_KIND, files=SITE_FILES)
    write_text_atomic(site / "index.html", render_html(board))
    write_text_atomic(site / "leaderboard.md", render_markdown(board))
    return board
