"""`frankenmoe push`: upload a finished build's published folders to the Hub, one commit each.

Push is a command over what the build published, not a stage: it reads each
folder's `build.json` (its files' sha256 and every stage's record), refuses a
folder whose files differ from it, that comes from another build than the
recipe's, or whose checks failed (verify for merged/ and awq/, llama.cpp's check
for gguf/, the transformers check for w4a16/; `publish.allow_failed: true`
overrides), and only then uploads, with huggingface_hub (HF_ENDPOINT and the usual
token sources: HF_TOKEN or `huggingface-cli login`). Pushing an unchanged build
creates no commit (the client skips files the remote already has). Transient
failures are retried with backoff (huggingface_hub retries its own pre-upload and
LFS transfers, but not the commit; its `http_backoff` wraps single requests, not
an HfApi call); since a Hub commit is atomic, a push that still fails has committed
nothing and the rerun resumes. The token never reaches output, records or errors.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from frankenmoe.errors import PublishError
from frankenmoe.provenance.manifest_format import MANIFEST, failed_checks, read_manifest
from frankenmoe.recipe import PublishSection
from frankenmoe.support.hashing import HashState
from frankenmoe.support.secrets import scrub

TRANSIENT_STATUS = {429, 500, 502, 503, 504}
TRIES = 4
# Answers that no retry changes, each with what to do about it.
REFUSED = {
    401: "the Hub refused the token (HTTP 401); set HF_TOKEN or run `huggingface-cli login` with a valid token",
    403: "the token may not write there (HTTP 403); use a token with write access to this namespace",
    404: "not found (HTTP 404); check publish.*.repo_id and that the namespace exists and the token can see it",
}
LFS_SUFFIXES = {".safetensors", ".bin", ".png", ".gguf", ".pt", ".model"}


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def check_folder(folder: Path, expected: dict[str, str], state: HashState) -> None:
    """The folder holds exactly the files its record lists ({path: sha256}), each with its sha256."""
    actual = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    if actual != set(expected):
        extra, missing = sorted(actual - set(expected)), sorted(set(expected) - actual)
        raise PublishError(
            f"push: {folder} does not match its build record (extra: {extra[:3]}, missing: {missing[:3]}); rebuild it"
        )
    for rel, meta in sorted(expected.items()):
        if state.sha256(folder / rel) != meta:
            raise PublishError(
                f"push: {folder / rel} differs from the sha256 in its build record; rebuild before pushing"
            )


def is_transient(err: BaseException) -> bool:
    """Worth another try: 429/5xx, a dropped or timed-out connection, or an LFS
    upload the client gave up on after its own retries. huggingface_hub retries
    pre-upload and LFS transfers itself, but not the commit on the LFS path."""
    import httpx2  # huggingface_hub 2.x's HTTP client
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(err, HfHubHTTPError):
        return getattr(err.response, "status_code", None) in TRANSIENT_STATUS
    if isinstance(err, RuntimeError) and str(err).startswith("Error while uploading"):
        return True
    return isinstance(err, (httpx2.TransportError, ConnectionError, TimeoutError))


def with_retries(action: Callable[[], Any], what: str, log: Callable[[str], None], sleep=time.sleep) -> Any:
    for attempt in range(1, TRIES + 1):
        try:
            return action()
        except Exception as err:  # classified below; anything else is not retried
            if not is_transient(err) or attempt == TRIES:
                raise
            wait = 2 ** (attempt - 1)
            log(f"push      {what}: {scrub(type(err).__name__)} (try {attempt} of {TRIES}), retrying in {wait}s")
            sleep(wait)


def push_build(
    publish: PublishSection,
    dist: Path,
    published: dict[str, str],
    build_id: str,
    state: HashState,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Push each folder of `published` ({folder: sha256 of its build.json}, as the
    recipe's finished build wrote them) that `publish` names a repo for; returns
    {folder: repo_id, revision, commit}. Nothing goes out unless every folder passes."""
    targets = [(folder, repo_id) for folder, repo_id in publish.targets().items() if folder in published]
    if not targets:
        raise PublishError(
            "publish: no publish.<folder>.repo_id is set for a folder this build publishes "
            f"({', '.join(sorted(published))})"
        )
    refused = []
    for folder, _ in targets:
        record = read_manifest(dist / folder, "rebuild the recipe (`frankenmoe build RECIPE`), then push")
        if record["build_id"] != build_id or state.sha256(dist / folder / MANIFEST) != published[folder]:
            why = (
                f"build {record['build_id']}, not {build_id}"
                if record["build_id"] != build_id
                else "build.json changed"
            )
            raise PublishError(
                f"push: {dist / folder} is not what this recipe's build published ({why}); "
                "rebuild it (`frankenmoe build RECIPE`), then push"
            )
        check_folder(dist / folder, {**record["files"], MANIFEST: published[folder]}, state)
        failed = failed_checks({name: r["result"] for name, r in record["stages"].items()}).get(folder)
        if failed and not publish.allow_failed:
            refused.append(
                f"push: {dist / folder} failed {', '.join(dict.fromkeys(f.split(':')[0] for f in failed))}, so it is "
                "not pushed; see its verify.md, or set publish.allow_failed: true to push it anyway (its card then "
                "says so in its first line)"
            )
    if refused:
        raise PublishError(refused)
    message = publish.commit_message or f"frankenmoe build {build_id}"
    if build_id not in message:
        message = f"{message} (frankenmoe build {build_id})"
    pushed = {}
    for folder, repo_id in targets:
        pushed[folder] = push_folder(dist / folder, repo_id, publish.private, publish.revision, message, log)
        log(f"push      {folder} -> {repo_id}@{publish.revision} {pushed[folder]['commit'][:12]}")
    return pushed


def push_folder(
    folder: Path, repo_id: str, private: bool, revision: str, message: str, log: Callable[[str], None]
) -> dict:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        with_retries(lambda: api.create_repo(repo_id, private=private, exist_ok=True), f"create {repo_id}", log)
        if revision != "main":
            with_retries(lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), f"branch {revision}", log)
        info = with_retries(
            lambda: api.upload_folder(
                repo_id=repo_id, folder_path=folder, revision=revision, commit_message=message, delete_patterns="*"
            ),
            f"upload {folder.name} to {repo_id}",
            log,
        )
    except Exception as err:
        if not (isinstance(err, (HfHubHTTPError, OSError)) or is_transient(err)):
            raise
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in REFUSED:
            raise PublishError(scrub(f"push: {folder} to {repo_id}: {REFUSED[status]}")) from None
        why = f"HTTP {status}" if status else type(err).__name__
        raise PublishError(
            scrub(
                f"push: {folder} to {repo_id} failed ({why}) after retries; a Hub commit is all-or-nothing, so nothing "
                "was committed by this try; rerun the same command to resume"
            )
        ) from None
    return {"repo_id": repo_id, "revision": revision, "commit": info.oid}


def dry_run(folder: Path, repo_id: str) -> list[str]:
    """What a push would send, without network writes: one line per file."""
    lines = [f"{repo_id}: from {folder}"]
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        lfs = f.suffix in LFS_SUFFIXES or f.stat().st_size > 10 * 2**20
        lines.append(
            f"  {f.relative_to(folder).as_posix():<40} {f.stat().st_size:>12,d} B  {'lfs' if lfs else 'regular'}"
        )
    return lines
