"""A local stand-in for the Hugging Face Hub that speaks enough of its HTTP API for huggingface_hub 2.x.

It is a real HTTP server (stdlib ``ThreadingHTTPServer`` on 127.0.0.1, a free port, a background thread), so
the real ``huggingface_hub`` client, and timm and transformers through it, talk to it exactly as they would
to huggingface.co. Repositories live in memory with git-like history: every commit gets a 40-hex sha and a
parent, branches (``main`` first) and tags point at commits, and any of a branch, a tag or a full sha
resolves a revision.

Endpoints (``{type}`` is ``model``/``dataset``/``space``; dataset and space URLs get their ``datasets/`` or
``spaces/`` prefix on the file routes, as on the Hub):

- ``POST /api/repos/create``                         create a repo with an initial ``.gitattributes`` commit
                                                     (a Space needs an ``sdk``: gradio, docker or static)
- ``GET  /api/{type}s/{repo}`` and ``.../revision/{rev}``   repo info (``id``, ``sha``, ``siblings``, ...)
- ``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]``   file listing (``recursive``), what snapshot_download reads
- ``GET  /api/{type}s/{repo}/refs``                  branches and tags
- ``GET  /api/{type}s/{repo}/commits/{rev}``         history, newest first
- ``POST /api/{type}s/{repo}/preupload/{rev}``       upload modes: always ``regular`` (see below)
- ``POST /api/{type}s/{repo}/commit/{rev}``          ndjson commit: ``file`` (base64), ``deletedFile``,
                                                     ``deletedFolder``; ``parentCommit`` is checked (412)
- ``POST /api/{type}s/{repo}/branch/{branch}``       create a branch (409 if it exists)
- ``POST /api/{type}s/{repo}/tag/{rev}``             create a tag (409 if it exists)
- ``POST /api/validate-yaml``                        README metadata check (accepts everything)
- ``HEAD/GET /[{type}s/]{repo}/resolve/{rev}/{path}`` file content with ``X-Repo-Commit``, ``ETag`` (the git
                                                     blob sha1, quoted), ``Content-Length``

Errors carry the Hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) so that
the client raises its typed errors. Writes need ``Authorization: Bearer <token>`` with a token the server
knows (``hf_test`` by default); private repos are invisible (``RepoNotFound``) without one.

Not implemented: Git LFS and Xet storage. The real Hub answers ``lfs`` in preupload for large or binary
files, which makes huggingface_hub (with ``hf_xet`` installed) upload them through a Xet CAS server; this
stand-in always answers ``regular``, so every file travels base64-encoded inside the commit payload and is
served back from ``/resolve`` directly. An ``lfsFile`` line in a commit is refused with a 400.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = ("model", "dataset", "space")
SPACE_SDKS = ("gradio", "docker", "static")
URL_PREFIXES = {"datasets": "dataset", "spaces": "space"}
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_TOKENS = frozenset({"hf_test"})
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(content: bytes) -> str:
    """The id git gives a blob: what the Hub sends as the ETag of a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, bytes]
    title: str
    message: str
    date: str


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    sdk: str | None = None  # a Space's SDK, given when it is created (the Hub requires one)

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        if SHA_RE.fullmatch(revision) and revision in self.commits:
            return revision
        return None

    def history(self, sha: str) -> list[Commit]:
        out = []
        current: str | None = sha
        while current is not None:
            commit = self.commits[current]
            out.append(commit)
            current = commit.parent
        return out


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        self.body = body or {}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class HubStandIn:
    """The server and its in-memory repositories; ``url`` is the endpoint to give huggingface_hub."""

    def __init__(self, tokens: frozenset[str] = DEFAULT_TOKENS):
        self.tokens = set(tokens)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), for debugging and assertions
        self._lock = threading.RLock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "HubStandIn":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="hub-stand-in", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "HubStandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ state, also usable directly from tests

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False,
                    sdk: str | None = None) -> Repo:
        with self._lock:
            key = (repo_type, repo_id)
            if key in self.repos:  # the Hub's 409 carries the url: create_repo(exist_ok=True) reads it
                prefix = "" if repo_type == "model" else f"{repo_type}s/"
                raise HubError(409, None, f"You already created this {repo_type} repo",
                               body={"url": f"{self.url}/{prefix}{repo_id}"})
            repo = Repo(repo_id, repo_type, private, created_at=_now(), sdk=sdk)
            sha = self._new_commit(repo, None, {".gitattributes": GITATTRIBUTES}, "initial commit", "")
            repo.branches["main"] = sha
            self.repos[key] = repo
            return repo

    def get_repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self._lock:
            return self.repos[(repo_type, repo_id)]

    def commit_count(self, repo_id: str, repo_type: str = "model") -> int:
        """Commits in the repo (all branches), 0 when it does not exist."""
        with self._lock:
            repo = self.repos.get((repo_type, repo_id))
            return 0 if repo is None else len(repo.commits)

    def files_at(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        with self._lock:
            repo = self.repos[(repo_type, repo_id)]
            sha = repo.resolve(revision)
            if sha is None:
                raise KeyError(revision)
            return dict(repo.commits[sha].files)

    def _new_commit(self, repo: Repo, parent: str | None, files: dict[str, bytes], title: str, message: str) -> str:
        self._counter += 1
        tree = hashlib.sha1(json.dumps({p: git_blob_sha1(c) for p, c in sorted(files.items())}).encode()).hexdigest()
        sha = hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}\n{parent}\n{tree}\n{title}\n{time.time_ns()}\n{self._counter}"
                           .encode()).hexdigest()
        repo.commits[sha] = Commit(sha, parent, dict(files), title, message, _now())
        return sha


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn
    server_version = "hub-stand-in/1.0"
    protocol_version = "HTTP/1.0"  # one request per connection: a stopped server is really gone

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    # ------------------------------------------------------------------ plumbing

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        segments = [unquote(s) for s in split.path.strip("/").split("/")] if split.path.strip("/") else []
        try:
            length = int(self.headers.get("Content-Length") or 0)
            self.body = self.rfile.read(length) if length else b""
            self._route(method, segments)
        except HubError as error:
            self._send_json(error.status, {"error": error.message, **error.body},
                            {**({"X-Error-Code": error.code} if error.code else {}),
                             "X-Error-Message": error.message, **error.headers})
        except Exception as error:  # a bug in the stand-in: report it to the client as a 500
            self._send_json(500, {"error": f"stand-in failure: {type(error).__name__}: {error}"})

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> int:
        with self.hub._lock:  # logged before the client can see the response
            self.hub.requests.append((self.command, urlsplit(self.path).path, status))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return status

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> int:
        return self._send(status, json.dumps(payload).encode(), headers)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization") or ""
        return auth.startswith("Bearer ") and auth[len("Bearer "):] in self.hub.tokens

    def _require_auth(self) -> None:
        if not self._authorized():
            raise HubError(401, None, "Invalid credentials in Authorization header")

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._authorized()):
            raise HubError(404, "RepoNotFound", "Repository not found")
        return repo

    def _resolve(self, repo: Repo, revision: str) -> str:
        sha = repo.resolve(revision)
        if sha is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return sha

    def _json_body(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError:
            raise HubError(400, None, "request body is not JSON") from None

    # ------------------------------------------------------------------ routes

    def _route(self, method: str, seg: list[str]) -> int:
        if seg[:1] == ["api"]:
            return self._route_api(method, seg[1:])
        # file routes: [datasets|spaces/]ns/name/resolve/rev/path...
        repo_type = "model"
        if seg and seg[0] in URL_PREFIXES:
            repo_type, seg = URL_PREFIXES[seg[0]], seg[1:]
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve_file(repo_type, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
        raise HubError(404, None, f"stand-in has no route for {method} {self.path}")

    def _route_api(self, method: str, seg: list[str]) -> int:
        with self.hub._lock:
            if method == "POST" and seg == ["repos", "create"]:
                return self._create_repo()
            if method == "POST" and seg == ["validate-yaml"]:
                return self._send_json(200, {"errors": [], "warnings": []})
            if len(seg) >= 3 and seg[0].endswith("s") and seg[0][:-1] in REPO_TYPES:
                repo_type, repo_id, rest = seg[0][:-1], f"{seg[1]}/{seg[2]}", seg[3:]
                return self._route_repo(method, repo_type, repo_id, rest)
        raise HubError(404, None, f"stand-in has no route for {method} {self.path}")

    def _route_repo(self, method: str, repo_type: str, repo_id: str, rest: list[str]) -> int:
        if method == "GET" and not rest:
            return self._repo_info(repo_type, repo_id, "main")
        if method == "GET" and len(rest) == 2 and rest[0] == "revision":
            return self._repo_info(repo_type, repo_id, rest[1])
        if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
            return self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]))
        if method == "GET" and rest == ["refs"]:
            return self._refs(repo_type, repo_id)
        if method == "GET" and len(rest) == 2 and rest[0] == "commits":
            return self._commits(repo_type, repo_id, rest[1])
        if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
            return self._preupload(repo_type, repo_id, rest[1])
        if method == "POST" and len(rest) == 2 and rest[0] == "commit":
            return self._commit(repo_type, repo_id, rest[1])
        if method == "POST" and len(rest) == 2 and rest[0] == "branch":
            return self._create_ref(repo_type, repo_id, rest[1], kind="branch")
        if method == "POST" and len(rest) == 2 and rest[0] == "tag":
            return self._create_ref(repo_type, repo_id, rest[1], kind="tag")
        raise HubError(404, None, f"stand-in has no route for {method} {self.path}")

    # ------------------------------------------------------------------ handlers

    def _create_repo(self) -> int:
        self._require_auth()
        body = self._json_body()
        name, organization = body.get("name"), body.get("organization")
        if not name or not organization:
            raise HubError(400, None, "the stand-in needs repo ids of the form 'org/name'")
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, None, f"invalid repo type {repo_type!r}")
        private = body.get("visibility") == "private" or bool(body.get("private"))
        repo_id = f"{organization}/{name}"
        sdk = body.get("sdk")
        if repo_type == "space" and sdk not in SPACE_SDKS:
            raise HubError(400, None, f"a Space needs an sdk, one of {', '.join(SPACE_SDKS)}")
        self.hub.create_repo(repo_id, repo_type, private, sdk)  # raises 409 when it exists
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return self._send_json(200, {"url": f"{self._base_url()}/{prefix}{repo_id}", "name": repo_id, "id": repo_id})

    def _base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> int:
        repo = self._repo(repo_type, repo_id)
        sha = self._resolve(repo, revision)
        commit = repo.commits[sha]
        siblings = [{"rfilename": path, "size": len(content), "blobId": git_blob_sha1(content)}
                    for path, content in sorted(commit.files.items())]
        return self._send_json(200, {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": repo_id.split("/")[0], "sha": sha, "lastModified": commit.date, "createdAt": repo.created_at,
            "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": siblings, **({"sdk": repo.sdk} if repo.repo_type == "space" else {}),
        })

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> int:
        repo = self._repo(repo_type, repo_id)
        commit = repo.commits[self._resolve(repo, revision)]
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        prefix = f"{path.rstrip('/')}/" if path else ""
        if path and path in commit.files:
            raise HubError(400, None, f"{path} is a file, not a folder")
        entries: dict[str, dict] = {}
        for file_path, content in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                if not recursive and depth > 1:
                    break
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                            "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                entries[file_path] = {"type": "file", "oid": git_blob_sha1(content), "size": len(content),
                                      "path": file_path}
        if path and not entries:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {revision}")
        return self._send_json(200, list(entries.values()))

    def _refs(self, repo_type: str, repo_id: str) -> int:
        repo = self._repo(repo_type, repo_id)
        def refs(names: dict[str, str], kind: str) -> list[dict]:
            return [{"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": sha} for name, sha in names.items()]
        return self._send_json(200, {"branches": refs(repo.branches, "heads"), "tags": refs(repo.tags, "tags"),
                                     "converts": []})

    def _commits(self, repo_type: str, repo_id: str, revision: str) -> int:
        repo = self._repo(repo_type, repo_id)
        history = repo.history(self._resolve(repo, revision))
        return self._send_json(200, [{"id": c.sha, "title": c.title, "message": c.message, "date": c.date,
                                      "authors": [{"user": "hf_test"}]} for c in history])

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> int:
        self._require_auth()
        repo = self._repo(repo_type, repo_id)
        files = repo.commits[self._resolve(repo, revision)].files
        out = []
        for item in self._json_body().get("files", []):
            existing = files.get(item["path"])
            out.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                        "oid": git_blob_sha1(existing) if existing is not None else None})
        return self._send_json(200, {"files": out, "commitOid": repo.resolve(revision)})

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> int:
        self._require_auth()
        repo = self._repo(repo_type, repo_id)
        if self.query.get("create_pr") in ("1", "true"):
            raise HubError(400, None, "the stand-in does not do pull requests")
        if revision not in repo.branches:
            if repo.resolve(revision) is not None:
                raise HubError(400, None, f"can only commit to a branch, not {revision!r}")
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        head = repo.branches[revision]
        files = dict(repo.commits[head].files)
        header: dict = {}
        try:
            lines = [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise HubError(400, None, "commit payload is not ndjson") from None
        for line in lines:
            key, value = line.get("key"), line.get("value") or {}
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, None, "only base64 file content is supported")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {value['path']}")
                del files[value["path"]]
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(folder)}
            elif key == "lfsFile":
                raise HubError(400, None, "the stand-in stores no LFS objects; it answers 'regular' in preupload")
            else:
                raise HubError(400, None, f"unknown commit operation {key!r}")
        if not header.get("summary"):
            raise HubError(400, None, "commit has no summary")
        parent = header.get("parentCommit")
        if parent is not None and parent != head:
            raise HubError(412, None, f"A commit has happened since. Please refresh and try again. ({parent} != {head})")
        sha = self.hub._new_commit(repo, head, files, header["summary"], header.get("description", ""))
        repo.branches[revision] = sha
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return self._send_json(200, {"success": True, "commitOid": sha, "pullRequestUrl": None,
                                     "commitUrl": f"{self._base_url()}/{prefix}{repo_id}/commit/{sha}"})

    def _create_ref(self, repo_type: str, repo_id: str, name: str, kind: str) -> int:
        self._require_auth()
        repo = self._repo(repo_type, repo_id)
        body = self._json_body()
        if kind == "branch":
            if name in repo.branches:
                raise HubError(409, None, f"Reference already exists: refs/heads/{name}")
            repo.branches[name] = self._resolve(repo, body.get("startingPoint") or "main")
        else:  # POST .../tag/{revision} with {"tag": name}
            tag = body.get("tag")
            if not tag:
                raise HubError(400, None, "no tag name")
            if tag in repo.tags:
                raise HubError(409, None, f"Reference already exists: refs/tags/{tag}")
            repo.tags[tag] = self._resolve(repo, name)
        return self._send_json(200, {})

    def _resolve_file(self, repo_type: str, repo_id: str, revision: str, path: str) -> int:
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            sha = self._resolve(repo, revision)
            content = repo.commits[sha].files.get(path)
        if content is None:
            raise HubError(404, "EntryNotFound", f"Entry not found: {path}", {"X-Repo-Commit": sha})
        return self._send(200, content, {"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha1(content)}"',
                                         "Accept-Ranges": "none"}, content_type="application/octet-stream")


def closed_port_url() -> str:
    """An http://127.0.0.1 endpoint where nothing listens: a Hub that is down."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
