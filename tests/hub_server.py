"""A tiny in-memory Hugging Face Hub for tests: just the HTTP calls huggingface_hub 2.4 makes.

Covers create_repo, create_branch, validate-yaml, preupload + commit (every file is "regular", so
no LFS/Xet upload), repo info, tree listing and file resolve (what snapshot_download uses).
Tokens map to (user, "read" | "write"); a user may write only under its own namespace. Every
request is logged as (method, path) so tests can assert the real client talked to this server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [  # (method, path regex, handler name); first match wins
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", rf"/api/models/{REPO}/branch/(?P<rev>[^/]+)", "create_branch"),
    ("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("GET", rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("GET", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    ("GET", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("HEAD", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]


class HubHTTPError(Exception):
    """An error response: status, message, and the X-Error-Code huggingface_hub dispatches on."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


def blob_oid(data: bytes) -> str:
    """Git's blob id, as the Hub reports it for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit id
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit id -> {path: bytes}
    messages: dict[str, tuple[str, str]] = field(default_factory=dict)  # commit id -> (summary, description)

    def add_commit(self, branch: str, files: dict[str, bytes], summary: str, description: str = "") -> str:
        sha = hashlib.sha1(f"{len(self.commits)}:{summary}:{sorted(files)}".encode()).hexdigest()
        self.commits[sha], self.branches[branch], self.messages[sha] = dict(files), sha, (summary, description)
        return sha

    def files(self, rev: str) -> tuple[str, dict[str, bytes]]:
        sha = self.branches.get(rev, rev)
        if sha not in self.commits:
            raise HubHTTPError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return sha, self.commits[sha]


class FakeHub:
    """State plus a threaded HTTP server on 127.0.0.1 (free port); use as a context manager."""

    def __init__(self, tokens: dict[str, tuple[str, str]]) -> None:
        self.tokens = tokens
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def seed(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> str:
        """Create a repo with one commit on main holding ``files`` (plus .gitattributes)."""
        self.repos[repo_id] = Repo(private)
        return self.repos[repo_id].add_commit("main", {".gitattributes": b"*.safetensors filter=lfs\n", **files}, "seed")

    def called(self, method: str, pattern: str) -> bool:
        return any(m == method and re.fullmatch(pattern, p) for m, p in self.requests)

    # ---- auth ---------------------------------------------------------------------------------
    def _user(self, headers: dict[str, str], need: str | None) -> tuple[str, str] | None:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            if need:
                raise HubHTTPError(401, "Invalid username or password.")
            return None
        if auth[7:] not in self.tokens:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        return self.tokens[auth[7:]]

    def _repo(self, repo_id: str, headers: dict[str, str], write: bool = False) -> Repo:
        user = self._user(headers, "write" if write else None)
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and (user is None or user[0] != repo_id.split("/")[0])):
            raise HubHTTPError(404, "Repository not found", "RepoNotFound")
        if write and (user[0] != repo_id.split("/")[0] or user[1] != "write"):
            raise HubHTTPError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    # ---- endpoints: each returns (status, headers, body) ------------------------------------
    def create_repo(self, h: dict, body: bytes) -> tuple:
        payload = json.loads(body)
        user, role = self._user(h, "write")
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        if repo_id.split("/")[0] != user or role != "write":
            raise HubHTTPError(403, f"You don't have the rights to create a model under the namespace {repo_id.split('/')[0]}")
        if repo_id in self.repos:
            raise HubHTTPError(409, "You already created this model repo", url=f"{self.url}/{repo_id}")
        self.seed(repo_id, {}, private=payload.get("visibility") == "private")
        return 200, {}, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}

    def validate_yaml(self, h: dict, body: bytes) -> tuple:
        text = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
        if match and not isinstance(yaml.safe_load(match[1]), dict):
            return 400, {}, {"errors": [{"message": "front matter is not a mapping"}]}
        return 200, {}, {"errors": [], "warnings": []}

    def create_branch(self, h: dict, body: bytes, repo: str, rev: str) -> tuple:
        r = self._repo(repo, h, write=True)
        if rev in r.branches:
            raise HubHTTPError(409, f"Branch {rev} already exists")
        r.branches[rev] = r.files(json.loads(body or b"{}").get("startingPoint") or "main")[0]
        return 200, {}, {}

    def preupload(self, h: dict, body: bytes, repo: str, rev: str) -> tuple:
        _, files = self._repo(repo, h, write=True).files(rev)
        wanted = json.loads(body)["files"]
        return 200, {}, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                    "oid": blob_oid(files[f["path"]]) if f["path"] in files else None} for f in wanted]}

    def commit(self, h: dict, body: bytes, repo: str, rev: str) -> tuple:
        r = self._repo(repo, h, write=True)
        head, files = r.files(rev)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, head):
            raise HubHTTPError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(files)
        for item in lines[1:]:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            else:  # lfsFile, deletedFolder, copies: never requested by the code under test
                raise HubHTTPError(400, f"fake hub does not support {key}")
        sha = r.add_commit(rev, files, header["summary"], header.get("description", ""))
        return 200, {}, {"commitUrl": f"{self.url}/{repo}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}

    def repo_info(self, h: dict, body: bytes, repo: str, rev: str | None) -> tuple:
        r = self._repo(repo, h)
        sha, files = r.files(rev or "main")
        return 200, {}, {"id": repo, "modelId": repo, "sha": sha, "private": r.private,
                         "siblings": [{"rfilename": p} for p in sorted(files)]}

    def tree(self, h: dict, body: bytes, repo: str, rev: str, path: str | None) -> tuple:
        _, files = self._repo(repo, h).files(rev)
        prefix = f"{path.rstrip('/')}/" if path else ""
        return 200, {}, [{"type": "file", "path": p, "size": len(d), "oid": blob_oid(d)}
                         for p, d in sorted(files.items()) if p.startswith(prefix)]

    def resolve(self, h: dict, body: bytes, repo: str, rev: str, path: str) -> tuple:
        sha, files = self._repo(repo, h).files(rev)
        if path not in files:
            raise HubHTTPError(404, f"Entry not found: {path}", "EntryNotFound")
        data = files[path]
        return 200, {"X-Repo-Commit": sha, "ETag": f'"{blob_oid(data)}"', "Content-Type": "application/octet-stream"}, data


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _dispatch(self) -> None:
            path = urlsplit(self.path).path
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hub.requests.append((self.command, path))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                for method, pattern, name in ROUTES:
                    match = re.fullmatch(pattern, path)
                    if method == self.command and match:
                        args = {k: unquote(v) if v else v for k, v in match.groupdict().items()}
                        status, extra, payload = getattr(hub, name)(headers, body, **args)
                        break
                else:
                    raise HubHTTPError(404, f"no route for {self.command} {path}")
            except HubHTTPError as err:
                status, payload = err.status, {"error": err.message, **err.extra}
                extra = {"X-Error-Message": err.message, **({"X-Error-Code": err.code} if err.code else {})}
            except Exception as err:  # noqa: BLE001 - a bug in the fake must show up as a 500, not a hang
                status, extra, payload = 500, {}, {"error": f"{type(err).__name__}: {err}"}
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", **extra, "Content-Length": str(len(data))}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_HEAD = _dispatch

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

    return Handler
