"""The CLI imports no more than it uses: convert --method lora, inspect and reconstruct never load
peft, transformers, matplotlib, triton or scipy (seconds of start-up each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import FIXTURE, REPO

HEAVY = ("peft", "transformers", "matplotlib", "triton", "scipy", "accelerate")
RUN = """
import json, sys
from wavecompress.cli import main
sys.argv = ["wavecompress", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def cli_modules(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", RUN, json.dumps(list(args))], capture_output=True, text=True, env=env, timeout=600)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_convert_lora_inspect_and_reconstruct_import_no_heavy_package(tmp_path: Path) -> None:
    out = tmp_path / "lora"
    converted = cli_modules("convert", str(FIXTURE), "--budget", "3000", "--method", "lora", "--out", str(out), "--quiet")
    assert converted == {"code": 0, "heavy": []}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] >= 1 and config["lora_alpha"] == config["r"]
    assert cli_modules("inspect", str(out)) == {"code": 0, "heavy": []}
    assert cli_modules("reconstruct", str(out), "--out", str(tmp_path / "dense.safetensors")) == {"code": 0, "heavy": []}


def test_the_lora_config_written_without_peft_is_the_one_peft_builds(tmp_path: Path) -> None:
    from peft import LoraConfig

    import wavecompress as wc
    from wavecompress.formats.adapter_config import json_ready

    out = wc.compress(FIXTURE, budget=3000, method="lora").save(tmp_path / "lora")
    written = json.loads((out / "adapter_config.json").read_text())
    built = json_ready(LoraConfig(**{key: value for key, value in written.items() if key != "peft_type"}))
    assert set(written) <= set(built)  # no field stock PEFT would warn about
    assert {key: built[key] for key in written} == written  # and every written field as PEFT itself sets it
    loaded = LoraConfig.from_pretrained(str(out))
    assert loaded.r == written["r"] and loaded.rank_pattern == written["rank_pattern"]
