"""The one output guard (issue 26): every writer — convert, convert-many and its --report, reconstruct,
export, the library's save — refuses, before any heavy work and again at the swap, an output that
reaches an input or its files by any spelling, a symlink or device, or a folder of the user's own
files; nothing is lost (every file under the test folder byte-identical afterwards)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from conftest import make_peft_lora
from test_adversarial import cli, leftovers, one_error_line, snapshot


@pytest.fixture(scope="module")
def lora_bytes(tmp_path_factory) -> dict[str, bytes]:
    folder, _ = make_peft_lora(tmp_path_factory.mktemp("lora") / "lora")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def put(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def lora(tmp_path: Path, lora_bytes) -> Path:
    return put(tmp_path / "lora", lora_bytes)


def refused(tmp_path: Path, args: list, needle: str, code: int = 2) -> None:
    """Run ``args``; it must exit ``code`` with one line holding ``needle`` and change no file under tmp_path."""
    before = snapshot(tmp_path)
    result = cli(*args)
    assert result.exit_code == code, result.output
    line = one_error_line(result.output)
    assert needle in line, line
    assert snapshot(tmp_path) == before, "a file changed"
    assert not leftovers(tmp_path)


# ---------------------------------------------------------------- spellings of a path


def test_resolve_output_collapses_dotdot_through_missing_folders(tmp_path: Path) -> None:
    from wavecompress.output_guard import resolve_output

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert resolve_output(tmp_path / "missing" / ".." / "real" / "x") == tmp_path / "real" / "x"
    assert resolve_output(tmp_path / "link" / "new" / ".." / "x") == tmp_path / "real" / "x"
    assert resolve_output(tmp_path / "a" / "b" / ".." / ".." / "link") == tmp_path / "real"


def test_report_through_a_missing_folder_and_dotdot_never_reaches_the_input(tmp_path: Path, lora: Path) -> None:
    sneaky = tmp_path / "new" / ".." / "lora" / "adapter_model.safetensors"
    refused(tmp_path, ["convert", lora, "--budget", 100, "--out", tmp_path / "o", "--report", sneaky], "overwrite the input")


def test_out_through_a_missing_folder_and_dotdot_is_the_input(tmp_path: Path, lora: Path) -> None:
    refused(tmp_path, ["convert", lora, "--budget", 100, "--out", tmp_path / "new" / ".." / "lora", "--force"], "is the input")


def test_file_input_protects_every_file_of_its_folder(tmp_path: Path, lora: Path) -> None:
    """Given as its weights file, the input's folder's own files (notes, config) are inputs too, even with --force."""
    (lora / "notes.json").write_text('{"mine": 1}')
    refused(tmp_path, ["convert", lora / "adapter_model.safetensors", "--budget", 100, "--out", tmp_path / "o",
                       "--report", lora / "notes.json", "--force"], "the input")


# ---------------------------------------------------------------- what --force may replace


def test_force_never_deletes_a_folder_of_the_users_own_files(tmp_path: Path, lora: Path) -> None:
    mine = tmp_path / "mydir"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    refused(tmp_path, ["convert", lora, "--budget", 100, "--out", mine, "--force"], "did not write")


def test_force_never_deletes_the_working_folder(tmp_path: Path, lora: Path, monkeypatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    refused(tmp_path, ["convert", lora, "--budget", 100, "--out", ".", "--force"], "did not write")


def test_force_replaces_an_earlier_output(tmp_path: Path, lora: Path) -> None:
    assert cli("convert", lora, "--budget", 100, "--out", tmp_path / "o", "--quiet").exit_code == 0
    again = cli("convert", lora, "--budget", 200, "--out", tmp_path / "o", "--quiet", "--force")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "o" / "wavecompress_report.json").read_text())["budget"] == 200


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_force_never_replaces_a_fifo_or_a_symlink(tmp_path: Path, lora: Path, kind: str) -> None:
    report = tmp_path / "r.json"
    if kind == "fifo":
        os.mkfifo(report)
    else:
        (tmp_path / "elsewhere.json").write_text('{"overall": {}, "method": "wara"}')
        report.symlink_to(tmp_path / "elsewhere.json")
    refused(tmp_path, ["convert", lora, "--budget", 100, "--out", tmp_path / "o", "--report", report, "--force"],
            "regular file" if kind == "fifo" else "symlink")
    assert report.is_fifo() if kind == "fifo" else report.is_symlink()


def test_reconstruct_force_replaces_only_its_own_earlier_output(tmp_path: Path, lora: Path) -> None:
    (tmp_path / "data.safetensors").write_bytes(b"not ours")
    refused(tmp_path, ["reconstruct", lora, "--out", tmp_path / "data.safetensors", "--force"], "not an earlier wavecompress output")
    assert cli("reconstruct", lora, "--out", tmp_path / "d.safetensors").exit_code == 0
    again = cli("reconstruct", lora, "--out", tmp_path / "d.safetensors", "--force")
    assert again.exit_code == 0, again.output
    assert load_file(tmp_path / "d.safetensors")


# ---------------------------------------------------------------- refused before the conversion


@pytest.mark.parametrize("where, needle", [("README/x", "is not a folder"), ("/proc/wavecompress-out", "cannot write in /proc")])
def test_out_in_an_impossible_place_is_refused_at_once(tmp_path: Path, lora: Path, where: str, needle: str) -> None:
    (tmp_path / "README").write_text("a file")
    target = tmp_path / where if not where.startswith("/") else Path(where)
    refused(tmp_path, ["convert", lora, "--budget", 100, "--out", target], needle)


# ---------------------------------------------------------------- the library's save


def test_library_save_never_replaces_its_source_or_a_parent_of_it(tmp_path: Path, lora: Path) -> None:
    import wavecompress
    from wavecompress.errors import InputError

    result = wavecompress.compress(wavecompress.load_deltas(lora), budget=100, method="wara", progress=False)
    (tmp_path / "mine.txt").write_text("mine")
    before = snapshot(tmp_path)
    for target in (lora, tmp_path):
        with pytest.raises(InputError, match="the input"):
            result.save(target, force=True)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- convert-many


def test_convert_many_report_goes_through_the_guard(tmp_path: Path, lora_bytes) -> None:
    inputs = tmp_path / "adapters"
    put(inputs / "a", lora_bytes)
    (tmp_path / "unrelated.json").write_text('{"mine": 1}')
    for report, needle in [(inputs / "a" / "adapter_model.safetensors", "overwrite the input"),
                           (tmp_path / "unrelated.json", "not an earlier wavecompress output")]:
        refused(tmp_path, ["convert-many", inputs, "--budget", 100, "--method", "wara", "--out", tmp_path / "out",
                           "--report", report, "--force", "--jobs", 1], needle)


def test_convert_many_never_writes_over_an_input_named_like_an_output(tmp_path: Path, lora_bytes) -> None:
    inputs = tmp_path / "adapters"
    put(inputs / "a", lora_bytes)
    put(inputs / "a-wara-b100", lora_bytes)  # the user's own adapter, named like a's output
    refused(tmp_path, ["convert-many", inputs, "--budget", 100, "--method", "wara", "--out", inputs, "--force", "--jobs", 1],
            "over the input")


# ---------------------------------------------------------------- re-checked at the swap


def test_a_folder_that_appears_at_out_while_converting_is_never_replaced(tmp_path: Path, lora: Path) -> None:
    env = {**os.environ, "WAVECOMPRESS_TEST_HOLD_STAGING": "4"}
    process = subprocess.Popen([sys.executable, "-c", "from wavecompress.cli import main; main(prog_name='wavecompress')",
                                "convert", str(lora), "--budget", "100", "--out", str(tmp_path / "o"), "--quiet"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not any(p.name.startswith(".o.tmp-") for p in tmp_path.iterdir()) and time.time() < deadline:
        time.sleep(0.1)
    (tmp_path / "o").mkdir()  # the user makes the folder meanwhile (empty: a plain rename would replace it)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 2, output
    assert "appeared while writing" in output and "Traceback" not in output
    assert (tmp_path / "o").is_dir() and not list((tmp_path / "o").iterdir())
    assert not leftovers(tmp_path)


# ---------------------------------------------------------------- workers die with their parent


def test_convert_many_workers_die_with_their_parent(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", (
        "import multiprocessing, os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from wavecompress.batch import _init_worker\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'), initializer=_init_worker, initargs=(1,))\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 600)\n"
        "    time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{worker}/stat") as stat:
            if stat.read().split(")")[-1].split()[0] == "Z":
                break
        time.sleep(0.2)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived its killed parent")


# ---------------------------------------------------------------- names printed safely


def test_escape_name_shows_control_and_bidi_characters() -> None:
    from wavecompress.text_safety import escape_controls

    assert escape_controls("q\x1b[31m\nx\u202eevil") == "q\\x1b[31m\\nx\\u202eevil"
    assert escape_controls("plain.name_1") == "plain.name_1"
