"""``wavecompress push``: publish an adapter folder to the Hugging Face Hub in one commit."""

from __future__ import annotations

from pathlib import Path

import click

from ..hub import push_adapter
from .common import debug_option, friendly_errors


@click.command()
@click.argument("out_dir", metavar="OUT_DIR", type=click.Path(path_type=Path))
@click.argument("repo_id", metavar="REPO_ID")
@click.option("--private", is_flag=True, help="Create the repo as private (an existing repo keeps its visibility).")
@click.option("--revision", default=None, help="Branch to commit to (created from main if missing) [default: main].")
@click.option("--token", default=None, help="Hub token with write access [default: HF_TOKEN or the `hf auth login` token].")
@click.option("--replace", is_flag=True, help="Delete files in the repo that are not part of this adapter, in the same commit.")
@debug_option
@friendly_errors
def push(out_dir: Path, repo_id: str, private: bool, revision: str | None, token: str | None, replace: bool, debug: bool) -> None:
    """Upload the adapter folder OUT_DIR to the Hub repo REPO_ID (owner/name), creating it if needed.

    All files go in a single commit, so the repo never shows a half-uploaded adapter. The model
    card's loading code is pointed at REPO_ID. HF_ENDPOINT selects another Hub.

    \b
    Examples:
      wavecompress push minilm-bbc-lora-wara-b3000 me/minilm-bbc-wara-b3000
      wavecompress push out/wara me/minilm-bbc-wara --private --revision b3000
    """
    result = push_adapter(out_dir, repo_id, private=private, revision=revision, token=token, replace=replace)
    click.echo(result.describe(out_dir, repo_id))
