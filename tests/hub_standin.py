"""A local stand-in for the Hugging Face Hub HTTP API, for tests that drive the real `huggingface_hub` client.

Why: publishing must be tested end to end (create repo, Git LFS upload, commit, download) without network
access and without mocking the client. This module serves, on 127.0.0.1 only, the subset of the Hub API that
the unmodified `huggingface_hub` 2.4 calls on its Git LFS upload path and its plain HTTP download path.
Standard library only, so it also runs as a script: `python tests/hub_standin.py --root DIR [--port P] [--token T]`.

Xet: huggingface_hub 2.4 chooses Xet uploads on the client side alone (`hf_xet` importable and
`HF_HUB_DISABLE_XET` unset; the variable is read once, when `huggingface_hub.constants` is imported). No server
answer steers it to LFS. The stand-in has no Xet storage, so clients must run with `HF_HUB_DISABLE_XET=1`; its
Xet token routes answer a 400 that says so. Downloads need nothing: without `X-Xet-Hash` headers the client uses
plain HTTP.

On disk under `root` (so a restarted server sees the same repos):
    repos/<ns>/<name>/repo.json           {"private": bool, "created": date}
    repos/<ns>/<name>/refs.json           {"main": head commit sha, or null before the first commit}
    repos/<ns>/<name>/commits/<sha>.json  {"sha", "parent", "message", "description", "date", "files"}
    repos/<ns>/<name>/objects/<sha256>    file contents, LFS and regular alike

Known differences from the real Hub: a new repo has no "initial commit" and no .gitattributes (so the commit
count is the number of pushes); model and dataset repos share one namespace; no pull requests or .gitignore
handling; README metadata is checked for structure only (no YAML parser in the standard library).
"""

from __future__ import annotations

import argparse
import base64
import codecs
import fnmatch
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import socket
import sys
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_TOKENS = ("hf_standin_token",)
USER = "standin-user"
# The Hub stores files of 10 MB or more with LFS whatever their name or content.
LFS_MIN_SIZE = 10 * 1024 * 1024
# The Hub's default .gitattributes for model repos: matching names go to LFS.
LFS_PATTERNS = (
    "*.7z",
    "*.arrow",
    "*.bin",
    "*.bz2",
    "*.ckpt",
    "*.ftz",
    "*.gz",
    "*.h5",
    "*.joblib",
    "*.lfs.*",
    "*.mlmodel",
    "*.model",
    "*.msgpack",
    "*.npy",
    "*.npz",
    "*.onnx",
    "*.ot",
    "*.parquet",
    "*.pb",
    "*.pickle",
    "*.pkl",
    "*.pt",
    "*.pth",
    "*.rar",
    "*.safetensors",
    "*.tar.*",
    "*.tar",
    "*.tflite",
    "*.tgz",
    "*.wasm",
    "*.xz",
    "*.zip",
    "*.zst",
    "*tfevents*",
)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SHA1 = re.compile(r"[0-9a-f]{40}")
SHA256 = re.compile(r"[0-9a-f]{64}")
CHUNK = 1024 * 1024
NO_XET = (
    "This Hub stand-in has no Xet storage. Run the client with HF_HUB_DISABLE_XET=1 (huggingface_hub reads it "
    "when imported) so that it uploads through Git LFS."
)


class HubError(Exception):
    """An HTTP error answer, with the Hub's X-Error-Code when the client maps it to a typed error."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = body or {}


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    """The Git LFS pointer file stored in git in place of an LFS file's content."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def now() -> str:
    """A date in the one format `huggingface_hub.utils.parse_datetime` accepts."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def upload_mode(path: str, sample: bytes, size: int) -> str:
    """ "lfs" or "regular", decided as the Hub does: LFS name patterns, size, or binary content in the sample."""
    name = path.rsplit("/", 1)[-1]
    if size >= LFS_MIN_SIZE or any(fnmatch.fnmatchcase(name, pattern) for pattern in LFS_PATTERNS):
        return "lfs"
    if b"\0" in sample:
        return "lfs"
    try:  # the 512-byte sample may end inside a multi-byte character: decode incrementally
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return "lfs"
    return "regular"


def metadata_errors(content: str) -> list[str]:
    """Structural problems of a README's `---` metadata block (a full YAML check needs a YAML parser)."""
    lines = content.splitlines()
    if not lines or lines[0].strip() != "---":
        return []
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if end is None:
        return ["The metadata block opened with '---' is never closed."]
    errors = []
    for number, line in enumerate(lines[1:end], start=2):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "\t" in line[: len(line) - len(line.lstrip())]:
            errors.append(f"Line {number}: tabs are not allowed in YAML indentation.")
        elif not line[0].isspace() and not line.startswith("-") and not re.match(r"[^:#\s][^:#]*:(\s|$)", line):
            errors.append(f"Line {number}: expected 'key: value', got {line.strip()!r}.")
    return errors


def check_repo_id(repo_id: str) -> str:
    """Refuse ids that are not `namespace/name`: they name folders on disk."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(NAME.fullmatch(p) and ".." not in p and not p.endswith(".git") for p in parts):
        raise HubError(400, f"Invalid repo id {repo_id!r}: expected 'namespace/name'.")
    return repo_id


def check_path(path: Any) -> str:
    """Refuse repo paths that could escape the repo or that git cannot hold."""
    if (
        not isinstance(path, str)
        or not path
        or path.startswith("/")
        or any(part in ("", ".", "..", ".git") for part in path.split("/"))
    ):
        raise HubError(400, f"Invalid path in repo: {path!r}.")
    return path


class Store:
    """Repos, commits and file contents on disk; one lock serialises metadata changes."""

    def __init__(self, root: Path):
        self.root = root
        self.lock = threading.RLock()

    def _dir(self, repo_id: str) -> Path:
        return self.root / "repos" / repo_id

    @staticmethod
    def _write_json(path: Path, data: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def meta(self, repo_id: str) -> dict | None:
        path = self._dir(repo_id) / "repo.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def create(self, repo_id: str, private: bool) -> bool:
        """Create an empty repo; False if it already exists."""
        with self.lock:
            if self.meta(repo_id) is not None:
                return False
            self._write_json(self._dir(repo_id) / "refs.json", {"main": None})
            self._write_json(self._dir(repo_id) / "repo.json", {"private": private, "created": now()})
            return True

    def refs(self, repo_id: str) -> dict[str, str | None]:
        return json.loads((self._dir(repo_id) / "refs.json").read_text())

    def record(self, repo_id: str, sha: str) -> dict | None:
        path = self._dir(repo_id) / "commits" / f"{sha}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def resolve(self, repo_id: str, revision: str) -> dict | None:
        """The commit a branch or commit sha names; None for a branch without commits yet."""
        refs = self.refs(repo_id)
        branch = revision.removeprefix("refs/heads/")
        if branch in refs:
            return self.record(repo_id, refs[branch]) if refs[branch] else None
        if SHA1.fullmatch(revision) and (record := self.record(repo_id, revision)) is not None:
            return record
        raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    def history(self, repo_id: str, head: dict | None) -> list[dict]:
        """Commits from `head` back to the root, newest first."""
        out = []
        while head is not None:
            out.append(head)
            head = self.record(repo_id, head["parent"]) if head["parent"] else None
        return out

    def object_path(self, repo_id: str, sha256: str) -> Path:
        return self._dir(repo_id) / "objects" / sha256

    def object_size(self, repo_id: str, sha256: str) -> int | None:
        path = self.object_path(repo_id, sha256)
        return path.stat().st_size if SHA256.fullmatch(sha256) and path.is_file() else None

    def write_object(self, repo_id: str, data: bytes) -> str:
        """Store content addressed by its sha256 (written once, atomically)."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.object_path(repo_id, sha)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{sha}.{uuid.uuid4().hex}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    def receive_object(self, repo_id: str, oid: str, size: int, read: Callable[[int], bytes]) -> None:
        """Stream an LFS upload to disk; keep it only if its size and sha256 are the announced ones."""
        path = self.object_path(repo_id, oid)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{oid}.{uuid.uuid4().hex}")
        digest, remaining = hashlib.sha256(), size
        with open(tmp, "wb") as out:
            while remaining and (chunk := read(min(CHUNK, remaining))):
                digest.update(chunk)
                out.write(chunk)
                remaining -= len(chunk)
        if remaining or digest.hexdigest() != oid:
            tmp.unlink()
            raise HubError(400, "Uploaded content does not match the announced sha256 and size.")
        os.replace(tmp, path)

    def commit(self, repo_id: str, branch: str, header: dict, operations: list[tuple[str, dict]]) -> str:
        """Apply operations on top of the branch head, store the commit, move the branch; return its sha."""
        with self.lock:
            refs = self.refs(repo_id)
            if branch not in refs:
                raise HubError(404, f"Cannot commit to {branch!r}: not a branch.", code="RevisionNotFound")
            head = refs[branch]
            parent_commit = header.get("parentCommit")
            if parent_commit and not (head or "").startswith(parent_commit):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(self.record(repo_id, head)["files"]) if head else {}
            for kind, value in operations:
                path = value["path"]
                if kind == "file":
                    files[path] = value["entry"]
                elif kind == "lfsFile":
                    size = self.object_size(repo_id, value.get("oid", ""))
                    if size is None or value.get("size", size) != size:
                        raise HubError(422, f"LFS object {value.get('oid')} of {path} was not uploaded.")
                    oid = value["oid"]
                    files[path] = {"size": size, "sha256": oid, "lfs": True, "oid": git_blob_id(lfs_pointer(oid, size))}
                elif kind == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                else:  # deletedFolder
                    files = {p: f for p, f in files.items() if not p.startswith(path + "/")}
            message, description = header.get("summary", ""), header.get("description", "")
            tree = sorted((p, f["sha256"], f["lfs"]) for p, f in files.items())
            sha = hashlib.sha1(json.dumps([head, tree, message, description]).encode()).hexdigest()
            record = {
                "sha": sha,
                "parent": head,
                "message": message,
                "description": description,
                "date": now(),
                "files": files,
            }
            self._write_json(self._dir(repo_id) / "commits" / f"{sha}.json", record)
            refs[branch] = sha
            self._write_json(self._dir(repo_id) / "refs.json", refs)
            return sha


@dataclass
class Failure:
    """An injected failure: the next `remaining` requests whose path contains `path_contains`."""

    status: int | None
    remaining: int
    path_contains: str
    drop: bool
    delay: float = 0.0  # a stall: wait this long, then answer normally


def tree_entry(path: str, file: dict) -> dict:
    """A file as the tree and paths-info endpoints describe it."""
    entry: dict[str, Any] = {"type": "file", "oid": file["oid"], "size": file["size"], "path": path}
    if file["lfs"]:
        pointer = lfs_pointer(file["sha256"], file["size"])
        entry["lfs"] = {"oid": file["sha256"], "size": file["size"], "pointerSize": len(pointer)}
    return entry


def folder_entry(path: str, files: dict[str, dict]) -> dict:
    """A folder entry; its oid is a hash of what it holds (not git's tree id, which no client checks)."""
    inside = sorted(f"{p} {f['oid']}" for p, f in files.items() if p.startswith(path + "/"))
    return {"type": "directory", "oid": hashlib.sha1("\n".join(inside).encode()).hexdigest(), "path": path}


def folders_of(files: dict[str, dict]) -> set[str]:
    """Every folder that holds a file (git has no empty folders)."""
    return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}


class Handler(BaseHTTPRequestHandler):
    """One connection; routes requests to the `api_*` methods below."""

    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection frees its thread after this
    server: "_Server"
    ROUTES: list[tuple[str, re.Pattern, str]] = []

    def setup(self) -> None:
        super().setup()
        self._unread = 0
        self.server.hub._connections.add(self.connection)

    def finish(self) -> None:
        self.server.hub._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests read `HubStandin.requests` instead, and headers (the token) are never logged."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def _serve(self, method: str) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        hub._record(method, url.path)
        try:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                self.close_connection = True
                raise HubError(411, "Send a Content-Length: chunked request bodies are not supported.")
            self._unread = int(self.headers.get("Content-Length") or 0)
            failure = hub._take_failure(url.path)
            if failure is not None and failure.delay:
                hub._stopping.wait(failure.delay)
                failure = None
            if failure is not None:
                self._read(self._unread)
                if failure.drop:  # close the socket without any response
                    self.close_connection = True
                    return
                raise HubError(failure.status or 500, f"Injected failure (HTTP {failure.status}).")
            for methods, pattern, name in self.ROUTES:
                if method in methods.split() and (match := pattern.fullmatch(url.path)):
                    params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    getattr(self, name)(query=parse_qs(url.query), **params)
                    break
            else:
                raise HubError(404, f"The Hub stand-in does not implement {method} {url.path}.")
        except HubError as error:
            self._read(self._unread)  # keep the connection usable for the next request
            self._send_json(
                error.status,
                {"error": error.message, **error.body},
                {
                    "X-Error-Message": error.message,
                    **({"X-Error-Code": error.code} if error.code else {}),
                    **error.headers,
                },
            )

    # -- request and response plumbing ------------------------------------------------------------------

    def _read(self, size: int) -> bytes:
        data = self.rfile.read(min(size, self._unread)) if size else b""
        self._unread -= len(data)
        return data

    def _body(self) -> bytes:
        return self._read(self._unread)

    def _json(self) -> Any:
        try:
            return json.loads(self._body() or b"{}")
        except ValueError:
            raise HubError(400, "Request body is not valid JSON.")

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self._send(
            status, {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}, body
        )

    # -- auth -------------------------------------------------------------------------------------------

    def _authenticated(self) -> bool | None:
        """True for a configured token, False for another one, None without an Authorization header."""
        header = self.headers.get("Authorization")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and self.server.hub._token_ok(token.strip())

    def _require_token(self) -> None:
        state = self._authenticated()
        if state is not True:
            raise HubError(
                401,
                "Invalid credentials in Authorization header"
                if state is False
                else "Authorization header with a Bearer token is required.",
            )

    def _readable(self, repo: str) -> dict:
        """The repo's metadata; a missing repo, or a private one without a valid token, is "not found"."""
        meta = self.server.hub.store.meta(check_repo_id(repo))
        authenticated = self._authenticated() is True
        if meta is None or (meta["private"] and not authenticated):
            raise HubError(404 if authenticated else 401, "Repository not found", code="RepoNotFound")
        return meta

    def _writable(self, repo: str) -> dict:
        self._require_token()
        return self._readable(repo)

    def _files_at(self, repo: str, rev: str) -> tuple[dict | None, dict[str, dict]]:
        commit = self.server.hub.store.resolve(repo, rev)
        return commit, (commit["files"] if commit else {})

    # -- account and repos ------------------------------------------------------------------------------

    def api_whoami(self, query: dict) -> None:
        self._require_token()
        self._send_json(
            200,
            {
                "type": "user",
                "id": "standin",
                "name": USER,
                "fullname": "Hub Stand-in",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "standin", "role": "write"}},
            },
        )

    def api_create_repo(self, query: dict) -> None:
        self._require_token()
        body = self._json()
        if body.get("type") not in (None, "model", "dataset"):
            raise HubError(400, "The Hub stand-in only hosts model and dataset repos.")
        repo = check_repo_id(f"{body.get('organization') or USER}/{body.get('name')}")
        private = body.get("visibility", "private" if body.get("private") else "public") != "public"
        url = f"{self.server.hub.url}/{repo}"
        if not self.server.hub.store.create(repo, private):
            # The Hub names the existing repo; create_repo(exist_ok=True) reads "url" from this answer.
            raise HubError(409, "You already created this model repo", body={"url": url})
        self._send_json(200, {"url": url, "name": repo, "id": repo})

    def api_validate_yaml(self, query: dict) -> None:
        errors = metadata_errors(str(self._json().get("content", "")))
        self._send_json(400 if errors else 200, {"errors": [{"message": e} for e in errors], "warnings": []})

    def api_model_info(self, query: dict, repo: str, rev: str = "main") -> None:
        meta = self._readable(repo)
        commit, files = self._files_at(repo, rev)
        blobs = query.get("blobs", [""])[0].lower() in ("1", "true")
        siblings = []
        for path, file in sorted(files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=file["size"], blobId=file["oid"])
                if file["lfs"]:
                    pointer_size = len(lfs_pointer(file["sha256"], file["size"]))
                    sibling["lfs"] = {"size": file["size"], "sha256": file["sha256"], "pointerSize": pointer_size}
            siblings.append(sibling)
        self._send_json(
            200,
            {
                "_id": repo,
                "id": repo,
                "modelId": repo,
                "author": repo.split("/")[0],
                "private": meta["private"],
                "sha": commit["sha"] if commit else None,
                "lastModified": commit["date"] if commit else meta["created"],
                "createdAt": meta["created"],
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            },
        )

    def api_tree(self, query: dict, repo: str, rev: str, path: str = "") -> None:
        self._readable(repo)
        commit, files = self._files_at(repo, rev)
        path = path.strip("/")
        folders = folders_of(files)
        if path and path not in folders:
            raise HubError(404, f"{path} does not exist on {rev}", code="EntryNotFound")
        recursive = query.get("recursive", [""])[0].lower() in ("1", "true")
        prefix = path + "/" if path else ""

        def listed(p: str) -> bool:
            return p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])

        entries = [folder_entry(p, files) for p in sorted(folders) if listed(p)]
        entries += [tree_entry(p, f) for p, f in sorted(files.items()) if listed(p)]
        self._send_json(200, entries)

    def api_paths_info(self, query: dict, repo: str, rev: str) -> None:
        self._readable(repo)
        body = self._body().decode()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body or "{}").get("paths", [])
        else:
            paths = parse_qs(body).get("paths", [])
        _, files = self._files_at(repo, rev)
        folders = folders_of(files)
        self._send_json(
            200,
            [
                tree_entry(p, files[p]) if p in files else folder_entry(p, files)
                for p in paths
                if p in files or p in folders
            ],
        )

    def api_commits(self, query: dict, repo: str, rev: str) -> None:
        self._readable(repo)
        commit, _ = self._files_at(repo, rev)
        self._send_json(
            200,
            [
                {
                    "id": c["sha"],
                    "title": c["message"],
                    "message": c["description"],
                    "authors": [{"user": USER}],
                    "date": c["date"],
                }
                for c in self.server.hub.store.history(repo, commit)
            ],
        )

    def api_refs(self, query: dict, repo: str) -> None:
        self._readable(repo)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
            for name, sha in sorted(self.server.hub.store.refs(repo).items())
            if sha
        ]
        self._send_json(200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    # -- uploads ----------------------------------------------------------------------------------------

    def api_preupload(self, query: dict, repo: str, rev: str) -> None:
        """Upload mode per file, and the remote oid the client compares with its own to skip unchanged files."""
        self._writable(repo)
        body = self._json()
        _, files = self._files_at(repo, rev)
        answer = []
        for item in body.get("files", []):
            path = check_path(item.get("path"))
            sample = base64.b64decode(item.get("sample", ""))
            remote = files.get(path)
            oid = None if remote is None else remote["sha256"] if remote["lfs"] else remote["oid"]
            answer.append(
                {
                    "path": path,
                    "uploadMode": upload_mode(path, sample, int(item.get("size", 0))),
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        self._send_json(200, {"files": answer})

    def _signature(self, repo: str, oid: str, size: int) -> str:
        return hmac.new(self.server.hub._secret, f"{repo}\n{oid}\n{size}".encode(), hashlib.sha256).hexdigest()

    def api_lfs_batch(self, query: dict, repo: str) -> None:
        """Git LFS batch API, basic transfer: a signed upload URL on the stand-in for each missing object."""
        self._writable(repo)
        body = self._json()
        if body.get("operation") != "upload":
            raise HubError(422, "The Hub stand-in only supports the LFS upload operation.")
        base, store, objects = self.server.hub.url, self.server.hub.store, []
        for item in body.get("objects", []):
            oid, size = item.get("oid"), item.get("size")
            entry = {"oid": str(oid), "size": size if isinstance(size, int) else -1}
            if not isinstance(oid, str) or not SHA256.fullmatch(oid) or not isinstance(size, int) or size < 0:
                entry["error"] = {"code": 422, "message": "oid must be a sha256 and size a non-negative integer"}
            elif store.object_size(repo, oid) != size:
                entry["authenticated"] = True
                entry["actions"] = {
                    "upload": {
                        "href": f"{base}/_standin/lfs/{repo}/{oid}?size={size}&sig={self._signature(repo, oid, size)}"
                    },
                    "verify": {"href": f"{base}/{repo}.git/info/lfs/objects/verify"},
                }
            objects.append(entry)
        self._send_json(
            200,
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            {"Content-Type": "application/vnd.git-lfs+json"},
        )

    def api_lfs_put(self, query: dict, repo: str, oid: str) -> None:
        """The upload URL: no Authorization header (like S3), so the batch answer signed it instead."""
        size = int(query.get("size", ["-1"])[0])
        if not hmac.compare_digest(query.get("sig", [""])[0], self._signature(check_repo_id(repo), oid, size)):
            raise HubError(403, "Invalid or missing upload signature.")
        if "Content-Length" not in self.headers:
            raise HubError(411, "Content-Length is required.")
        if self._unread != size:
            raise HubError(400, f"Expected {size} bytes, got a Content-Length of {self._unread}.")
        self.server.hub.store.receive_object(repo, oid, size, self._read)
        self._send(200, {"ETag": f'"{oid}"', "Content-Length": "0"})

    def api_lfs_verify(self, query: dict, repo: str) -> None:
        self._writable(repo)
        body = self._json()
        if self.server.hub.store.object_size(repo, str(body.get("oid", ""))) != body.get("size"):
            raise HubError(404, f"LFS object {body.get('oid')} was not uploaded.")
        self._send_json(200, {"success": True})

    def api_commit(self, query: dict, repo: str, rev: str) -> None:
        """NDJSON commit: a header line, then file (base64), lfsFile, deletedFile and deletedFolder lines."""
        self._writable(repo)
        if query.get("create_pr"):
            raise HubError(400, "The Hub stand-in does not support pull requests.")
        try:
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        except ValueError:
            raise HubError(400, "Commit payload is not valid NDJSON.")
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first commit line must be the header.")
        store, operations = self.server.hub.store, []
        for line in lines[1:]:
            kind, value = line.get("key"), dict(line.get("value") or {})
            if kind not in ("file", "lfsFile", "deletedFile", "deletedFolder"):
                raise HubError(400, f"Unsupported commit operation {kind!r}.")
            path = value.get("path")
            value["path"] = check_path(path.rstrip("/") if kind == "deletedFolder" and isinstance(path, str) else path)
            if kind == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "Regular files must be sent base64-encoded.")
                data = base64.b64decode(value.get("content", ""))
                value["entry"] = {
                    "size": len(data),
                    "sha256": store.write_object(repo, data),
                    "lfs": False,
                    "oid": git_blob_id(data),
                }
            operations.append((kind, value))
        sha = store.commit(repo, rev, lines[0].get("value") or {}, operations)
        self._send_json(
            200,
            {
                "success": True,
                "commitOid": sha,
                "hookOutput": "",
                "pullRequestUrl": None,
                "commitUrl": f"{self.server.hub.url}/{repo}/commit/{sha}",
            },
        )

    def api_no_xet(self, query: dict, repo: str) -> None:
        raise HubError(400, NO_XET)

    # -- downloads --------------------------------------------------------------------------------------

    def api_resolve(self, query: dict, repo: str, rev: str, path: str) -> None:
        """A file's bytes with the headers hf_hub_download needs: X-Repo-Commit, ETag, X-Linked-* for LFS."""
        self._readable(repo)
        commit, files = self._files_at(repo, rev)
        headers = {"X-Repo-Commit": commit["sha"]} if commit else {}
        file = files.get(path)
        if file is None:
            raise HubError(404, "Entry not found", code="EntryNotFound", headers=headers)
        size = file["size"]
        headers.update(
            {
                "ETag": f'"{file["sha256"] if file["lfs"] else file["oid"]}"',
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
        )
        if file["lfs"]:
            headers.update({"X-Linked-Etag": f'"{file["sha256"]}"', "X-Linked-Size": str(size)})
        start, end, status = 0, size - 1, 200
        if match := re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", self.headers.get("Range", "")):
            first, last = match.groups()
            start = int(first) if first else max(size - int(last or 0), 0)
            end = min(int(last), size - 1) if first and last else size - 1
            if start >= size or start > end:
                raise HubError(416, "Requested range not satisfiable.", headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(end - start + 1)
        self._send(status, headers)
        if self.command == "GET":
            with open(self.server.hub.store.object_path(repo, file["sha256"]), "rb") as source:
                source.seek(start)
                remaining = end - start + 1
                while remaining and (chunk := source.read(min(CHUNK, remaining))):
                    self.wfile.write(chunk)
                    remaining -= len(chunk)


_REPO = r"(?P<repo>[^/]+/[^/]+)"
# Dataset repos share the models' store (one namespace) and every route: /api/datasets/... and
# /datasets/<repo>/... are the model routes under another prefix, enough for `datasets` to read a repo.
_API = r"/api/(?:models|datasets)"
_FILES = r"(?:/datasets)?"
Handler.ROUTES = [
    (methods, re.compile(pattern), name)
    for methods, pattern, name in (
        ("GET", r"/api/whoami-v2", "api_whoami"),
        ("POST", r"/api/repos/create", "api_create_repo"),
        ("POST", r"/api/validate-yaml", "api_validate_yaml"),
        ("GET", rf"{_API}/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "api_model_info"),
        ("GET", rf"{_API}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "api_tree"),
        ("POST", rf"{_API}/{_REPO}/paths-info/(?P<rev>[^/]+)", "api_paths_info"),
        ("GET", rf"{_API}/{_REPO}/commits/(?P<rev>[^/]+)", "api_commits"),
        ("GET", rf"{_API}/{_REPO}/refs", "api_refs"),
        ("POST", rf"{_API}/{_REPO}/preupload/(?P<rev>[^/]+)", "api_preupload"),
        ("POST", rf"{_API}/{_REPO}/commit/(?P<rev>[^/]+)", "api_commit"),
        ("GET POST", rf"{_API}/{_REPO}/xet-(?:read|write)-token/.*", "api_no_xet"),
        ("POST", rf"{_FILES}/{_REPO}\.git/info/lfs/objects/batch", "api_lfs_batch"),
        ("POST", rf"{_FILES}/{_REPO}\.git/info/lfs/objects/verify", "api_lfs_verify"),
        ("PUT", rf"/_standin/lfs/{_REPO}/(?P<oid>[0-9a-f]{{64}})", "api_lfs_put"),
        ("GET HEAD", rf"{_FILES}/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "api_resolve"),
    )
]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: "HubStandin"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (or a stop() that closes their socket) are not errors worth a traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class HubStandin:
    """The stand-in server: start() serves from a background thread; fail() injects errors for retry tests.

    `requests` lists every (method, path) received, failed ones included, so tests can count retries.
    """

    def __init__(
        self,
        root: Path,
        tokens: set[str] | list[str] | tuple[str, ...] = DEFAULT_TOKENS,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        if not ipaddress.IPv4Address(host).is_loopback:
            raise ValueError(f"The Hub stand-in only listens on loopback addresses, not {host}.")
        self.store = Store(Path(root))
        self.requests: list[tuple[str, str]] = []
        self._tokens = tuple(tokens)
        self._address = (host, port)
        self._secret = secrets.token_bytes(32)  # signs LFS upload URLs; never derived from a token
        self._failures: list[Failure] = []
        self._stopping = threading.Event()  # ends stalls early when the server stops
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("The Hub stand-in is not started.")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        """Serve in a daemon thread; return the base URL to pass as `endpoint=`."""
        self._server = _Server(self._address, Handler)
        self._server.hub = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-standin", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and close open keep-alive connections."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        for connection in list(self._connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def fail(self, status: int | None = 500, times: int = 1, path_contains: str = "", drop: bool = False) -> None:
        """Make the next `times` requests whose path contains `path_contains` answer `status`, or, with
        `drop`, close the connection without a response (after reading the request)."""
        with self._lock:
            self._failures.append(Failure(status, times, path_contains, drop))

    def stall(self, seconds: float, path_contains: str, times: int = 1) -> None:
        """Make the next `times` requests whose path contains `path_contains` wait `seconds`
        before being served: a slow upload, to interrupt a client in the middle of it."""
        with self._lock:
            self._failures.append(Failure(None, times, path_contains, False, seconds))

    def count(self, path_contains: str, method: str | None = None) -> int:
        """How many requests (failed ones included) had a path containing `path_contains`."""
        return sum(1 for m, p in list(self.requests) if path_contains in p and method in (None, m))

    def commits(self, repo_id: str) -> list[dict]:
        """The commits of main, oldest first: [{"sha", "message", "files": {path: {"size", "sha256", "lfs"}}}]."""
        store = self.store
        with store.lock:
            if store.meta(repo_id) is None:
                return []
            history = store.history(repo_id, store.resolve(repo_id, "main"))
        return [
            {
                "sha": c["sha"],
                "message": c["message"],
                "files": {
                    p: {"size": f["size"], "sha256": f["sha256"], "lfs": f["lfs"]}
                    for p, f in sorted(c["files"].items())
                },
            }
            for c in reversed(history)
        ]

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def _take_failure(self, path: str) -> Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.remaining > 0 and failure.path_contains in path:
                    failure.remaining -= 1
                    return failure
            return None

    def _token_ok(self, token: str) -> bool:
        return any(hmac.compare_digest(token.encode(), t.encode()) for t in self._tokens)


def main(argv: list[str] | None = None) -> None:
    """Serve until killed; print the URL once so a parent process can read it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="folder holding the repos")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", action="append", help="accepted token (repeatable); default hf_standin_token")
    args = parser.parse_args(argv)
    hub = HubStandin(args.root, tokens=args.token or DEFAULT_TOKENS, port=args.port)
    print(hub.start(), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
