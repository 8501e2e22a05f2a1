"""Fine-tuning data: unlabelled (or labelled) texts from a file, tokenized into fixed batches.

Accepted files: ``.txt`` (one text per line), ``.jsonl`` (one object per line with ``text`` and an
optional ``label``, or one JSON string per line), ``.json`` (a list of the same), ``.csv`` /
``.tsv`` (a ``text`` column and an optional ``label`` column). Labels are class ids (ints, or
names the model's ``label2id`` knows); they only feed the optional supervised loss.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError

TEXT_KEYS = ("text", "sentence", "content", "prompt")


@dataclass(frozen=True)
class Example:
    """One text and its optional class label."""

    text: str
    label: int | str | None = None


def _from_record(record: Any, where: str) -> Example:
    if isinstance(record, str):
        return Example(record)
    if isinstance(record, dict):
        for key in TEXT_KEYS:
            if isinstance(record.get(key), str):
                label = record.get("label", record.get("labels"))
                return Example(record[key], label if label not in ("", None) else None)
        raise InputError(f"{where}: no text field (expected one of {', '.join(TEXT_KEYS)})")
    raise InputError(f"{where}: expected a string or an object with a 'text' field, got {type(record).__name__}")


def read_examples(path: str | Path) -> list[Example]:
    """Examples from a .txt / .jsonl / .json / .csv / .tsv file (empty texts dropped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    if suffix == ".jsonl":
        examples = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    examples.append(_from_record(json.loads(line), f"{path}:{number}"))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
    elif suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: invalid JSON ({exc.msg})") from None
        if not isinstance(records, list):
            raise InputError(f"{path}: expected a JSON list of texts or objects")
        examples = [_from_record(record, f"{path}[{i}]") for i, record in enumerate(records)]
    elif suffix in (".csv", ".tsv"):
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
        if rows and not any(key in rows[0] for key in TEXT_KEYS):
            raise InputError(f"{path}: no text column (expected one of {', '.join(TEXT_KEYS)})")
        examples = [_from_record(row, f"{path}:{i + 2}") for i, row in enumerate(rows)]
    else:
        examples = [Example(line) for line in text.splitlines()]
    examples = [example for example in examples if example.text.strip()]
    if len(examples) < 2:
        raise InputError(f"{path}: needs at least 2 non-empty texts, found {len(examples)}")
    return examples


def as_examples(items: list[Any]) -> list[Example]:
    """Accept Examples, strings, or (text, label) pairs."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Example):
            out.append(item)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append(Example(str(item[0]), item[1]))
        else:
            out.append(_from_record(item, f"example {i}"))
    return out


def label_id(label: int | str, label2id: dict[str, int] | None, num_labels: int | None) -> int:
    """A class id from an int, a digit string, or a name in ``label2id``."""
    if isinstance(label, bool):
        raise InputError(f"label {label!r} is not a class id")
    if isinstance(label, int):
        value = label
    elif isinstance(label, str) and label2id and label in label2id:
        value = int(label2id[label])
    elif isinstance(label, str) and label.strip().lstrip("-").isdigit():
        value = int(label)
    else:
        raise InputError(f"label {label!r} is neither a class id nor a label name of the model")
    if num_labels is not None and not 0 <= value < num_labels:
        raise InputError(f"label {label!r} is outside the model's {num_labels} classes")
    return value


def split_examples(examples: list[Example], held: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held-out) with ``held`` texts held out after a seeded shuffle; with held < 1 both are the whole set."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    if held < 1:
        return examples, examples
    return [examples[i] for i in order[held:]], [examples[i] for i in order[:held]]


def make_batches(tokenizer, examples: list[Example], batch_size: int, max_length: int,
                 label2id: dict[str, int] | None = None, num_labels: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Tokenized batches (padded to the longest in each batch); ``labels`` only when all are labelled."""
    batches = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = dict(tokenizer([e.text for e in chunk], truncation=True, max_length=max_length, padding=True, return_tensors="pt"))
        if all(e.label is not None for e in chunk):
            batch["labels"] = torch.tensor([label_id(e.label, label2id, num_labels) for e in chunk])
        batches.append(batch)
    return batches
