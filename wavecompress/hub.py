"""The Hugging Face Hub: read adapters by repo id (through huggingface_hub's cache) and push outputs.

Everything goes through ``huggingface_hub``, so its environment applies unchanged: ``HF_ENDPOINT``,
``HF_TOKEN`` (or ``hf auth login``), ``HF_HOME`` / ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE=1`` (read
from the cache only). A push is a single commit: it lands whole or not at all.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, WavecompressError
from .layout import CARD_NAME, CONFIG_NAME, REPORT_NAME, WEIGHTS_NAME

# owner/name, optionally @revision (branch, tag or commit); the Hub's own naming rules for each part.
_REPO_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<revision>[\w.\-/]+))?$")
DOWNLOAD_PATTERNS = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]
REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME)


@dataclass
class PushResult:
    """Where a push landed: the commit URL, and whether it changed anything (identical files make no commit)."""

    commit_url: str
    changed: bool

    def describe(self, folder: Path, repo_id: str) -> str:
        if not self.changed:
            return f"{repo_id} already holds exactly these files; nothing to commit ({self.commit_url})"
        return f"pushed {folder} to {repo_id}: {self.commit_url}"


class HubError(WavecompressError):
    """The Hub refused, or could not be reached; exit code 3 (the input itself may be fine)."""

    exit_code = 3


def parse_repo_ref(text: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) if ``text`` looks like ``owner/name[@revision]``, else None."""
    match = _REPO_REF.match(text)
    if match is None or ".." in text or "--" in match["repo"]:
        return None
    return match["repo"], match["revision"]


def hub_reference(path: str | Path) -> tuple[str, str | None] | None:
    """The Hub repo a CLI/library input means: only when it is not an existing local path."""
    text = str(path)
    if Path(text).exists():
        return None  # a local path always wins
    return parse_repo_ref(text)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


# Exception classes, by (top-level module, class name) anywhere in the MRO, of the three HTTP stacks
# huggingface_hub has used: requests (< 1.0), httpx (1.x) and httpx2 (2.x). Matching by name needs
# none of them installed, and catches their subclasses (ReadTimeout, ConnectError, ProxyError, ...).
_UNREACHABLE = {("requests", "ConnectionError"), ("requests", "Timeout"), ("urllib3", "HTTPError"),
                ("httpx", "TransportError"), ("httpx", "TimeoutException"),
                ("httpx2", "TransportError"), ("httpx2", "TimeoutException")}
_STATUS = {("requests", "HTTPError"), ("httpx", "HTTPStatusError"), ("httpx2", "HTTPStatusError")}
HUB_TIMEOUT_ENV = "WAVECOMPRESS_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT = 10.0  # seconds without progress (connect, or a read/write stalled) before a try fails


def _kinds(exc: BaseException) -> set[tuple[str, str]]:
    return {(cls.__module__.split(".")[0], cls.__name__) for cls in type(exc).__mro__}


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the Hub could not be reached or stopped answering (any HTTP stack)."""
    return isinstance(exc, (ConnectionError, TimeoutError)) or bool(_kinds(exc) & _UNREACHABLE)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of an HTTP-error exception of any stack, else None."""
    if not _kinds(exc) & _STATUS:
        return None
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def hub_timeout() -> float:
    """Seconds a Hub request may make no progress (``WAVECOMPRESS_HUB_TIMEOUT``, default 10)."""
    text = os.environ.get(HUB_TIMEOUT_ENV)
    if not text:
        return DEFAULT_HUB_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{HUB_TIMEOUT_ENV}={text!r}: expected a number of seconds") from None
    if not 0 < value < 86400:
        raise InputError(f"{HUB_TIMEOUT_ENV}={text!r}: expected a number of seconds between 0 and 86400")
    return value


_TIMEOUTS_SET: list[float] = []


def set_hub_timeouts() -> float:
    """Give huggingface_hub's shared HTTP client connect/read/write timeouts (it has none by default),
    and its download and metadata requests the same; returns the timeout in seconds."""
    from huggingface_hub import constants

    seconds = hub_timeout()
    constants.HF_HUB_DOWNLOAD_TIMEOUT = min(constants.HF_HUB_DOWNLOAD_TIMEOUT, seconds)
    constants.HF_HUB_ETAG_TIMEOUT = min(constants.HF_HUB_ETAG_TIMEOUT, seconds)
    if _TIMEOUTS_SET == [seconds]:
        return seconds
    try:
        from huggingface_hub.utils import _http
    except ImportError:  # pragma: no cover - a layout we do not know: keep huggingface_hub's defaults
        return seconds
    factory = getattr(_http, "default_client_factory", None)
    http = getattr(_http, "httpx2", None) or getattr(_http, "httpx", None)
    if factory is not None and http is not None and hasattr(_http, "set_client_factory"):  # httpx / httpx2 era
        def enforce_timeouts(request) -> None:  # type: ignore[no-untyped-def]
            # huggingface_hub passes timeout=None (no limit) on some calls, which overrides a client default.
            limits = dict(request.extensions.get("timeout") or {})
            request.extensions["timeout"] = {key: limits.get(key) or seconds for key in ("connect", "read", "write", "pool")}

        def client_with_timeouts():  # type: ignore[no-untyped-def]
            client = factory()
            client.timeout = http.Timeout(seconds, connect=seconds)
            hooks = client.event_hooks
            hooks["request"] = [*hooks.get("request", []), enforce_timeouts]
            client.event_hooks = hooks
            return client

        _http.set_client_factory(client_with_timeouts)
    elif hasattr(_http, "configure_http_backend"):  # requests era: a default timeout on every request
        import requests

        class TimeoutSession(requests.Session):
            def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                if kwargs.get("timeout") is None:
                    kwargs["timeout"] = (seconds, seconds)
                return super().request(*args, **kwargs)

        _http.configure_http_backend(backend_factory=TimeoutSession)
    _TIMEOUTS_SET[:] = [seconds]
    return seconds


@contextlib.contextmanager
def hub_errors(repo_id: str, action: str) -> Iterator[None]:
    """Turn huggingface_hub / network exceptions into one-line HubErrors naming the repo and the step."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except OfflineModeIsEnabled:
        raise HubError(f"{repo_id}: HF_HUB_OFFLINE=1 is set, but {action} needs the Hub") from None
    except GatedRepoError:
        raise HubError(f"{repo_id}: gated repo; accept its terms on the Hub and use a token that has access") from None
    except RevisionNotFoundError:
        raise HubError(f"{repo_id}: revision not found on {_endpoint()} while {action}") from None
    except RepositoryNotFoundError as exc:
        if exc.response is not None and exc.response.status_code == 401:
            raise HubError(f"{repo_id}: the Hub rejected the token (401) while {action}; check --token / HF_TOKEN or run `hf auth login`") from None
        raise HubError(f"{repo_id}: no such model repo on {_endpoint()} (or it is private and your token cannot read it)") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise HubError(f"{repo_id}: the Hub rejected the token (401) while {action}; check --token / HF_TOKEN or run `hf auth login`") from None
        if status == 403:
            raise HubError(f"{repo_id}: your token has no write access to this repo or namespace (403) while {action}; use a token with write permission") from None
        message = ((exc.server_message or str(exc)).strip().splitlines() or ["no message"])[0][:300]
        raise HubError(f"{repo_id}: the Hub answered {status} while {action}: {message}") from None
    except LocalEntryNotFoundError:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise HubError(f"{repo_id}: HF_HUB_OFFLINE=1 and the adapter is not in the cache ({constants.HF_HUB_CACHE}); run once online first") from None
        raise HubError(f"{repo_id}: cannot reach the Hub at {_endpoint()} and the adapter is not in the cache") from None
    except Exception as exc:  # noqa: BLE001 - network and HTTP errors of whichever stack huggingface_hub uses
        if is_unreachable(exc):
            detail = " ".join(str(exc).split())[:200] or "no answer"
            raise HubError(f"{repo_id}: cannot reach the Hub at {_endpoint()} while {action} "
                           f"({type(exc).__name__}: {detail})") from None
        status = http_status(exc)
        if status is not None:
            detail = (" ".join(str(exc).split()) or "no message")[:200]
            raise HubError(f"{repo_id}: the Hub answered {status} while {action}: {detail}") from None
        raise


def download_adapter(repo_id: str, revision: str | None = None, token: str | None = None) -> Path:
    """Folder of a Hub adapter's files in huggingface_hub's cache (downloaded with progress if needed)."""
    from huggingface_hub import snapshot_download

    try:
        with hub_errors(repo_id, "downloading the adapter"):
            seconds = set_hub_timeouts()
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=DOWNLOAD_PATTERNS, token=token,
                                            etag_timeout=seconds))
    except HubError as exc:
        owner = repo_id.split("/", 1)[0]
        if Path(owner).is_dir():  # `fixtures/minilm-bbc-lor`: most likely a mistyped local path, not a Hub repo
            raise InputError(f"{repo_id}: neither a local path ({owner}/ holds no {repo_id.split('/', 1)[1]}) nor a "
                             f"Hub repo that could be fetched ({str(exc).split(': ', 1)[-1]})") from None
        raise
    missing = [name for name in REQUIRED_FILES if not (folder / name).exists()]
    if missing:
        raise InputError(f"{repo_id}: the Hub repo has no {' or '.join(missing)} (is it a PEFT adapter saved with safetensors?)")
    return folder


def card_license(card_path: Path) -> str | None:
    """The ``license`` of a model card's YAML front matter, if the card exists and declares one."""
    if not card_path.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        license_ = ModelCard.load(card_path).data.to_dict().get("license")
    except Exception:  # noqa: BLE001 - a malformed source card must not stop a conversion
        return None
    return str(license_) if license_ else None


def adapter_files(folder: Path) -> list[str]:
    """Relative paths of the files a push uploads: everything in the folder except hidden entries.

    A symlink is uploaded only when it points to a file inside the folder (a link to anything outside
    is refused, never followed); FIFOs and other special files are refused."""
    import stat

    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder}: not an adapter folder (no {' or '.join(missing)})")
    root = Path(os.path.realpath(folder))
    files = []
    for top, dirs, names in os.walk(folder):  # does not descend into symlinked folders
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in [*names, *dirs]:
            path = Path(top) / name
            if name.startswith(".") or (path.is_dir() and not path.is_symlink()):
                continue
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                real = Path(os.path.realpath(path))
                if root not in real.parents:
                    raise InputError(f"{path}: is a symlink to {os.readlink(path)}, outside {folder}; "
                                     "refusing to upload it (copy the file in, or remove the link)")
                if not real.is_file():
                    raise InputError(f"{path}: is a symlink to something that is not a file; refusing to upload it")
            elif not stat.S_ISREG(path.lstat().st_mode):
                raise InputError(f"{path}: is not a regular file (FIFO, socket or device); refusing to upload it")
            files.append(relative)
    return sorted(files)


def check_adapter_folder(folder: Path) -> list[str]:
    """The files of ``folder`` to push, after checking that its config and report parse and its
    weights are a valid safetensors file (all before anything is sent to the Hub)."""
    from .deltas.safetensors_file import open_safetensors
    from .deltas.safetensors_reader import read_json

    files = adapter_files(folder)
    read_json(folder / CONFIG_NAME)
    with open_safetensors(folder / WEIGHTS_NAME):
        pass
    if REPORT_NAME in files:
        read_json(folder / REPORT_NAME)
    return files


def commit_message(folder: Path) -> tuple[str, str]:
    """(summary, description) for the push commit, from the folder's config and report."""
    from .version import __version__

    from .deltas.safetensors_reader import read_json

    config = read_json(folder / CONFIG_NAME)
    prov = config.get("wavecompress") if isinstance(config.get("wavecompress"), dict) else {}
    report_path = folder / REPORT_NAME
    if not prov and report_path.is_file():  # stock-PEFT configs (lora, waveft-seeded) carry no provenance key
        report = read_json(report_path)
        prov = {"method": report.get("method"), "budget": report.get("budget"), "source": report.get("source")}
    if not prov:
        return f"Upload {config.get('peft_type', 'PEFT')} adapter with wavecompress {__version__}", ""
    summary = f"Add {prov.get('method')} adapter, budget {prov.get('budget')} values/layer"
    description = [f"Converted by wavecompress {prov.get('version', __version__)} from {prov.get('source')} ({prov.get('source_kind')})."]
    if report_path.is_file():
        overall: Any = read_json(report_path).get("overall", {})
        try:
            if prov.get("method") in overall:
                summary += f", relative error {float(overall[prov['method']]['relative_error']):.4f}"
            description.append(
                "Relative Frobenius error over all layers at the same budget: "
                + ", ".join(f"{name} {float(values['relative_error']):.4f}" for name, values in overall.items())
                + "."
            )
        except (TypeError, KeyError, ValueError, AttributeError):
            raise InputError(f"{report_path}: 'overall' is not the report layout wavecompress writes") from None
    return summary, "\n".join(description)


def check_push_target(repo_id: str, token: str | None = None) -> str:
    """The token to push ``repo_id`` with; refuses a malformed repo id or a missing token up front."""
    from huggingface_hub import get_token

    if parse_repo_ref(repo_id) is None or "@" in repo_id:
        raise InputError(f"{repo_id}: not a Hub repo id (expected owner/name)")
    token = token or get_token()
    if not token:
        raise HubError(f"{repo_id}: no Hugging Face token; pass --token, set HF_TOKEN, or run `hf auth login`")
    return token


def push_after_save(folder: Path, repo_id: str, private: bool = False) -> PushResult:
    """Push a freshly written output; on failure say that the local folder is intact and how to retry."""
    try:
        return push_adapter(folder, repo_id, private=private)
    except WavecompressError as exc:
        raise HubError(
            f"{exc} -- the converted adapter is intact at {folder}; retry with `wavecompress push {folder} {repo_id}`"
        ) from None


def push_adapter(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    replace: bool = False,
) -> PushResult:
    """Upload an adapter folder to ``repo_id`` (created if needed) in one commit.

    Refuses a repo (branch) that already holds files that are not part of this adapter, unless
    ``replace``, which deletes them in the same commit. The card's loading code is pointed at
    ``repo_id``; every other file is uploaded byte for byte.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from .formats.model_card import retarget_card

    folder = Path(folder)
    files = check_adapter_folder(folder)
    summary, description = commit_message(folder)
    api = HfApi(token=check_push_target(repo_id, token))
    branch = revision or "main"
    set_hub_timeouts()
    with hub_errors(repo_id, "creating the repo"):
        api.create_repo(repo_id, private=True if private else None, exist_ok=True)
    with hub_errors(repo_id, f"reading branch {branch}"):
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        info = api.repo_info(repo_id, revision=branch)
    others = sorted({s.rfilename for s in info.siblings or []} - set(files) - {".gitattributes"})
    if others and not replace:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise HubError(
            f"{repo_id}: branch {branch} already holds files that are not part of this adapter ({shown}); "
            "push to a new repo, or pass --replace to delete them in the same commit "
            "(add --revision BRANCH to do that on a branch and leave main untouched)"
        )
    operations: list[Any] = [CommitOperationDelete(path) for path in others]
    for name in files:
        if name == CARD_NAME:
            card = retarget_card((folder / name).read_text(encoding="utf-8"), repo_id)
            operations.append(CommitOperationAdd(name, card.encode("utf-8")))
        else:
            operations.append(CommitOperationAdd(name, str(folder / name)))
    with hub_errors(repo_id, "committing the upload (nothing was committed)"):
        try:
            commit = api.create_commit(
                repo_id, operations, commit_message=summary, commit_description=description,
                revision=branch, parent_commit=info.sha,
            )
        except ValueError as exc:  # the Hub refused the card's metadata before anything was sent
            if isinstance(exc, HfHubHTTPError):
                raise
            raise HubError(f"{repo_id}: {str(exc).splitlines()[0]} (README.md front matter)") from None
    return PushResult(commit.commit_url, changed=commit.oid != info.sha)
