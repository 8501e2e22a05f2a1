"""Hub push and pull with the real huggingface_hub client against a local fake Hub (tests/hub_server.py).

Each CLI call runs in a subprocess so huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE
at import time exactly as it does for a user; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import wavecompress as wc
from conftest import make_peft_lora
from hub_server import FakeHub
from wavecompress.formats.model_card import retarget_card

WRITE, READ, BOB = "hf_alice_write", "hf_alice_read", "hf_bob_write"
BASE = "hf-internal-testing/tiny-random-BertModel"


def cli(endpoint: str, home: Path, *args: str, token: str | None = None, offline: bool = False) -> subprocess.CompletedProcess:
    """Run ``wavecompress ARGS`` as a user would, with the Hub environment pointing at ``endpoint``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_")) and k != "TRANSFORMERS_OFFLINE"}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_OFFLINE="1" if offline else "0", HF_HUB_DISABLE_TELEMETRY="1")
    if token:
        env["HF_TOKEN"] = token
    code = "from wavecompress.cli import main; main(prog_name='wavecompress')"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def hub():
    with FakeHub({WRITE: ("alice", "write"), READ: ("alice", "read"), BOB: ("bob", "write")}) as server:
        yield server


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT LoRA folder with a Hub base model id and a card that declares a license."""
    folder, _ = make_peft_lora(tmp_path_factory.mktemp("src") / "lora", r=4)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = BASE
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "README.md").write_text("---\nlicense: mit\nlibrary_name: peft\n---\n# a tiny LoRA\n")
    return folder


@pytest.fixture(scope="module")
def pulled(hub: FakeHub, source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``convert bob/tiny-lora --push-to alice/tiny-wara``: a pull by repo id, then a push."""
    commit = hub.seed("bob/tiny-lora", {p.name: p.read_bytes() for p in source.iterdir()})
    work = tmp_path_factory.mktemp("pull")
    before = len(hub.requests)
    result = cli(hub.url, work / "hf", "convert", "bob/tiny-lora", "--budget", "300", "--method", "wara",
                 "--out", str(work / "out"), "--push-to", "alice/tiny-wara", "--quiet", token=WRITE)
    return {"result": result, "work": work, "commit": commit, "requests": hub.requests[before:]}


def test_push_creates_the_repo_in_one_commit_with_byte_identical_files(hub: FakeHub, source: Path, tmp_path: Path) -> None:
    out = wc.compress(source, budget=300, method="waveft").save(tmp_path / "out")
    before = len(hub.requests)
    result = cli(hub.url, tmp_path / "hf", "push", str(out), "alice/tiny-waveft", "--private", token=WRITE)
    assert result.returncode == 0, result.stderr
    assert "pushed" in result.stdout and "/alice/tiny-waveft/commit/" in result.stdout

    repo = hub.repos["alice/tiny-waveft"]
    assert repo.private
    assert len(repo.commits) == 2  # the repo's initial commit, then exactly one upload
    files = repo.commits[repo.branches["main"]]
    local = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(files) == set(local) | {".gitattributes"}
    for name in ["adapter_config.json", "adapter_model.safetensors", "wavecompress_report.json"]:
        assert files[name] == local[name], name
    card = local["README.md"].decode()
    assert 'reconstruct("out")' in card and str(tmp_path) not in card  # the folder's name, not the absolute path
    assert files["README.md"].decode() == retarget_card(card, "alice/tiny-waveft")  # only the loading code changes
    assert 'wavecompress.reconstruct("alice/tiny-waveft")' in files["README.md"].decode()

    summary, description = repo.messages[repo.branches["main"]]
    error = json.loads(local["wavecompress_report.json"])["overall"]["waveft"]["relative_error"]
    assert summary == f"Add waveft adapter, budget 300 values/layer, relative error {error:.4f}"
    assert "lora" in description and "sparse" in description
    calls = [r for r in hub.requests[before:] if r[0] == "POST"]
    assert [p for _, p in calls] == ["/api/repos/create", "/api/validate-yaml", "/api/models/alice/tiny-waveft/preupload/main",
                                     "/api/models/alice/tiny-waveft/commit/main"]

    again = cli(hub.url, tmp_path / "hf", "push", str(out), "alice/tiny-waveft", token=WRITE)
    assert again.returncode == 0, again.stderr
    assert "already holds exactly these files; nothing to commit" in again.stdout
    assert len(repo.commits) == 2


def test_convert_by_repo_id_downloads_through_the_cache_and_matches_a_local_conversion(pulled: dict, source: Path, hub: FakeHub) -> None:
    result, work = pulled["result"], pulled["work"]
    assert result.returncode == 0, result.stderr
    assert "pushed" in result.stdout
    snapshot = work / "hf" / "hub" / "models--bob--tiny-lora" / "snapshots" / pulled["commit"]
    assert (snapshot / "adapter_model.safetensors").read_bytes() == (source / "adapter_model.safetensors").read_bytes()
    assert "Fetching 3 files" in result.stderr  # huggingface_hub's download progress

    remote = json.loads((work / "out" / "wavecompress_report.json").read_text())
    local = wc.compress(source, budget=300, method="wara").report.to_json()
    assert remote["source"] == f"hf://bob/tiny-lora@{pulled['commit']}"
    assert [r["relative_error"] for r in remote["layers"]] == [r["relative_error"] for r in local["layers"]]
    assert remote["overall"] == local["overall"]
    paths = {p for _, p in pulled["requests"]}
    assert f"/bob/tiny-lora/resolve/{pulled['commit']}/adapter_model.safetensors" in paths
    assert "/api/models/alice/tiny-wara/commit/main" in paths


def test_pushed_card_parses_and_carries_hub_metadata(pulled: dict, hub: FakeHub) -> None:
    repo = hub.repos["alice/tiny-wara"]
    text = repo.commits[repo.branches["main"]]["README.md"].decode()
    card = ModelCard(text)
    assert card.data.library_name == "peft"
    assert card.data.base_model == BASE
    assert card.data.license == "mit"  # from the source repo's card
    assert card.data.tags == ["wavecompress", "peft", "wara"]
    assert f"[bob/tiny-lora]({hub.url}/bob/tiny-lora) at revision `{pulled['commit']}`" in card.text
    assert "--budget 300" in card.text and "OVERALL" in card.text
    assert 'wavecompress.reconstruct("alice/tiny-wara")' in card.text
    assert (pulled["work"] / "out" / "README.md").read_text() != text  # the local card keeps the local path


def test_offline_mode_converts_from_the_cache_without_any_request(pulled: dict, hub: FakeHub) -> None:
    work = pulled["work"]
    before = len(hub.requests)
    result = cli(hub.url, work / "hf", "convert", "bob/tiny-lora", "--budget", "300", "--method", "wara",
                 "--out", str(work / "offline"), "--quiet", offline=True)
    assert result.returncode == 0, result.stderr
    assert hub.requests[before:] == []
    assert (work / "offline" / "wavecompress_report.json").read_bytes() == (work / "out" / "wavecompress_report.json").read_bytes()

    missing = cli(hub.url, work / "hf", "convert", "bob/never-downloaded", "--budget", "300", "--out", str(work / "x"), offline=True)
    assert missing.returncode == 3
    assert missing.stderr.strip().splitlines()[-1].startswith("error: bob/never-downloaded: HF_HUB_OFFLINE=1 and the adapter is not in the cache")


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (None, "no Hugging Face token; pass --token, set HF_TOKEN, or run `hf auth login`"),
        ("hf_wrong", "the Hub rejected the token (401)"),
        (READ, "your token has no write access to this repo or namespace (403)"),
    ],
)
def test_auth_failures_give_one_clear_line_and_commit_nothing(hub: FakeHub, source: Path, token: str | None, message: str, tmp_path: Path) -> None:
    hub.seed("alice/existing", {})
    before = len(hub.requests)
    result = cli(hub.url, tmp_path / "hf", "push", str(source), "alice/existing", token=token)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: alice/existing: ") and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr
    assert len(hub.repos["alice/existing"].commits) == 1
    assert (token is None) == (hub.requests[before:] == [])  # no token: refused before any request


def test_repo_with_other_files_is_refused_then_replaced_on_a_branch(hub: FakeHub, source: Path, tmp_path: Path) -> None:
    main_commit = hub.seed("alice/full-model", {"config.json": b"{}", "model.safetensors": b"weights"})
    refused = cli(hub.url, tmp_path / "hf", "push", str(source), "alice/full-model", token=WRITE)
    assert refused.returncode == 3
    assert "already holds files that are not part of this adapter (config.json, model.safetensors)" in refused.stderr
    repo = hub.repos["alice/full-model"]
    assert len(repo.commits) == 1

    pushed = cli(hub.url, tmp_path / "hf", "push", str(source), "alice/full-model", "--revision", "lora", "--replace", token=WRITE)
    assert pushed.returncode == 0, pushed.stderr
    assert repo.branches["main"] == main_commit and len(repo.commits) == 2  # one commit, on the branch only
    branch = repo.commits[repo.branches["lora"]]
    assert sorted(branch) == [".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert branch["adapter_model.safetensors"] == (source / "adapter_model.safetensors").read_bytes()


def test_push_failure_after_convert_keeps_the_local_output(source: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on: the Hub is unreachable
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    out = tmp_path / "out"
    result = cli(dead, tmp_path / "hf", "convert", str(source), "--budget", "200", "--out", str(out), "--push-to", "alice/x",
                 "--quiet", token=WRITE)
    assert result.returncode == 3
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: alice/x: cannot reach the Hub at {dead}")
    assert f"the converted adapter is intact at {out}; retry with `wavecompress push {out} alice/x`" in line
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "wavecompress_report.json"]
    # complete and readable: its ΔŴ against the source ΔW gives the error its report states
    rebuilt, report = wc.reconstruct(out), json.loads((out / "wavecompress_report.json").read_text())
    true = {layer.name: layer.to_dense().double() for layer in wc.load_deltas(source).layers}
    assert sorted(rebuilt) == sorted(true) and len(true) == 4
    error = sum(float((true[n] - rebuilt[n].double()).square().sum()) for n in true)
    energy = sum(float(d.square().sum()) for d in true.values())
    assert report["overall"][report["method"]]["relative_error"] == pytest.approx((error / energy) ** 0.5, rel=1e-5)


def test_retarget_card_points_every_loading_snippet_at_the_repo() -> None:
    from wavecompress.formats.model_card import _ONE_CALL, _ONE_CALL_STOCK
    from wavecompress.methods import all_methods

    snippets = {m.name: m.card_snippet for m in all_methods()}
    snippets.update(one_call=_ONE_CALL.replace("{peft_type}", "X"), stock=_ONE_CALL_STOCK)
    for method, snippet in snippets.items():
        snippet = snippet.replace("{base}", "base_model")
        local = snippet.format(repo="out/some-local-folder")
        pushed = retarget_card(local, "alice/x")
        assert "out/some-local-folder" not in pushed, method
        assert pushed.count('"alice/x"') == local.count('"out/some-local-folder"') >= 1, method
