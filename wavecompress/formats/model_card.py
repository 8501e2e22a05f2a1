"""README.md model card in the Hub's format: YAML front matter, then what, how and how well."""

from __future__ import annotations

from typing import Any

from ..report import Report

_LOADING = {
    "lora": """```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "{repo}")
```""",
    "waveft": """```python
import wavecompress  # registers this adapter type with PEFT; stock PEFT alone refuses it
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "{repo}")  # merge_and_unload() works too
dense_deltas = wavecompress.reconstruct("{repo}")  # or just {{module name: ΔW}}
```""",
    "waveft-seeded": """```python
from peft import PeftModel  # stock PEFT WaveFT: no wavecompress needed
model = PeftModel.from_pretrained(base_model, "{repo}")
```""",
}
_LOADING["wara"] = _LOADING["waveft"]


def _yaml_list(values: list[str]) -> str:
    return "\n".join(f"- {value}" for value in values)


def render_model_card(report: Report, config: dict[str, Any], source_license: str | None = None, repo: str = "PATH") -> str:
    """The card text for an output folder: front matter, source, budget, report table, loading code."""
    method = report.method
    tags = ["wavecompress", "peft", "waveft" if method == "waveft" else method]
    front = ["---", "library_name: peft"]
    base_model = config.get("base_model_name_or_path")
    if base_model:
        front.append(f"base_model: {base_model}")
    if source_license:
        front.append(f"license: {source_license}")
    front += ["tags:", _yaml_list(tags), "---"]
    overall = report.overall()[method]
    body = [
        f"# {method} adapter made by wavecompress",
        "",
        f"Converted from `{report.source}` with `wavecompress convert --method {method} --budget {report.budget}`.",
        f"It stores {overall.stored_values} trainable values ({overall.bytes} bytes with indices) "
        f"where the input stored {report.input_stored_values}; relative Frobenius error over all layers "
        f"{overall.relative_error:.4f}.",
        "",
        "## Reconstruction error, with the baselines at the same budget",
        "",
        "```",
        report.format_table(),
        "```",
        "",
        "## How to load it",
        "",
        _LOADING[method].format(repo=repo),
        "",
    ]
    return "\n".join(front) + "\n\n" + "\n".join(body)
