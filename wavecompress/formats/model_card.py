"""README.md model card in the Hub's format: YAML front matter, then what, how and how well."""

from __future__ import annotations

import re
from typing import Any

import yaml

from ..methods.registry import get_method
from ..report import Report

# First block for every type: the one-call loader (works for every format wavecompress writes).
_ONE_CALL = """```python
import wavecompress  # needed for this adapter type: without it PEFT stops with KeyError: '{peft_type}'
model = wavecompress.load_adapter({base}, "{repo}")  # a PeftModel; .merge_and_unload() works too
```"""
# Stock-PEFT formats: plain PEFT first (the snippet), then the one-call loader in a sentence.
_ONE_CALL_STOCK = """With wavecompress installed, the one call that loads every format works too:
`wavecompress.load_adapter({base}, "{repo}")`."""

# A Hub model id: name or owner/name (no local paths, no URLs).
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
# Inputs read from the Hub carry the source "hf://owner/name@commit" (huggingface_hub's URI form).
_HUB_SOURCE = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w.\-/]+))?$")
# The quoted location in the loading snippets (these and Method.card_snippet).
_LOAD_TARGET = re.compile(r'(from_pretrained\(base_model, |wavecompress\.reconstruct\(|load_adapter\([^,\n]+, )"[^"\n]*"')


def inline_code(value: Any) -> str:
    """``value`` as one Markdown code span that nothing in it can break out of: control characters
    (newlines included) escaped, and a backtick fence longer than any backtick run inside."""
    text = str(value)
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or longest else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _provenance_lines(source: str, base_model: Any) -> list[str]:
    """Where the input came from (its Hub repo, when it was read from the Hub) and the base model."""
    lines = []
    match = _HUB_SOURCE.match(source)
    if match:
        from huggingface_hub import constants

        at = f" at revision {inline_code(match['revision'])}" if match["revision"] else ""
        lines += ["", f"Source adapter on the Hub: [{match['repo']}]({constants.ENDPOINT}/{match['repo']}){at}."]
    if base_model:
        lines += ["", f"Base model: {inline_code(base_model)}."]
    return lines


def retarget_card(card: str, repo: str) -> str:
    """The same card with its loading code pointed at ``repo`` (used when pushing to the Hub)."""
    return _LOAD_TARGET.sub(lambda m: f'{m[1]}"{repo}"', card)


# Diffusion outputs (kohya lora_unet_* / diffusers unet.* module names): into a diffusers pipeline.
_DIFFUSION = """```python
import wavecompress
from diffusers import StableDiffusionPipeline  # or the pipeline of your base model
pipe = StableDiffusionPipeline.from_pretrained(base_model_path)
wavecompress.load_adapter(pipe, "{repo}")  # applied in place, as pipe.load_lora_weights does; merge=True folds it in
```
For ComfyUI, A1111 or `pipe.load_lora_weights`, write a kohya file:
`wavecompress export {repo} --to lora --layout kohya --out lora.safetensors`."""
_DIFFUSION_NAMES = re.compile(r"^(lora_unet_|lora_te\d?_|unet\.|text_encoder(_\d)?\.|transformer\.)")


def is_diffusion_output(targets: Any) -> bool:
    """True when every module is named for a diffusion pipeline; ``transformer.*`` names alone are also GPT-2's
    (``transformer.h.0.attn.c_attn``), so they count only beside kohya, ``unet.`` or text-encoder names."""
    if not targets or isinstance(targets, str):
        return False
    names = [str(name) for name in targets]
    return all(_DIFFUSION_NAMES.match(name) for name in names) and not all(name.startswith("transformer.") for name in names)


def _loading_blocks(method: str, config: dict[str, Any], repo: str) -> list[str]:
    """wavecompress formats: the one-call loader first, then plain PEFT; stock formats the other way round
    (no wavecompress needed); diffusion adapters (kohya or diffusers module names): into a pipeline.
    ``base_model`` is named by its Hub id when known."""
    targets = config.get("target_modules") or []
    if is_diffusion_output(targets):
        return [_DIFFUSION.format(repo=repo)]
    base_model = config.get("base_model_name_or_path")
    base = f'"{base_model}"' if base_model and _HUB_ID.match(str(base_model)) else "base_model"
    peft_type = config.get("peft_type", "")
    found = get_method(method)
    if found.stock_peft:
        return [found.card_snippet.format(repo=repo), "", _ONE_CALL_STOCK.format(base=base, repo=repo)]
    return [_ONE_CALL.format(base=base, repo=repo, peft_type=peft_type), "", found.card_snippet.format(repo=repo)]


def render_model_card(report: Report, config: dict[str, Any], source_license: str | None = None, repo: str = "PATH") -> str:
    """The card text for an output folder: front matter, source, budget, report table, loading code."""
    method = report.method
    tags = ["wavecompress", "peft", method]
    meta: dict[str, Any] = {"library_name": "peft"}
    base_model = config.get("base_model_name_or_path")
    if base_model and _HUB_ID.match(str(base_model)):  # the Hub only accepts repo ids here
        meta["base_model"] = str(base_model)
    if source_license:
        meta["license"] = str(source_license)
    meta["tags"] = tags
    front = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip("\n"), "---"]
    overall = report.overall()[method]
    table = report.format_table()
    table_fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", table)), default=0))  # names cannot close it
    body = [
        f"# {method} adapter made by wavecompress",
        "",
        f"Converted from {inline_code(report.source)} with {inline_code(f'wavecompress convert --method {method} --budget {report.budget}')}.",
        f"It stores {overall.stored_values} trainable values ({overall.bytes} bytes with indices) "
        f"where the input stored {report.input_stored_values}; relative Frobenius error over all layers "
        f"{overall.relative_error:.4f}.",
        *_provenance_lines(report.source, base_model),
        "",
        "## Reconstruction error, with the baselines at the same budget",
        "",
        table_fence,
        table,
        table_fence,
        "",
        "## How to load it",
        "",
        *_loading_blocks(method, config, repo),
        "",
    ]
    return "\n".join(front) + "\n\n" + "\n".join(body)
