"""Load MileBench-format data (github.com/MileBench/MileBench) as :class:`Sample` items.

On-disk layout, one folder per dataset::

    <root>/<Dataset>/<Dataset>.json
    <root>/<Dataset>/images/...

The JSON file::

    {"meta_data": {"dataset": "ActionSequence",
                   "task_instruction": ["instruction text 0", "instruction text 1", ...],
                   "question_type": "multi-choice" | "open-ended"},
     "data": [{"sample_id": 0,
               "task_instruction_id": 0,
               "task_instance": {"context": "text with {image#1} ... {image#2} placeholders and the question",
                                 "images_path": ["a.jpg", "b.jpg"],
                                 "choice_list": ["opt A text", "opt B text", ...]},   # multi-choice only
               "response": "gold answer"},
              ...]}

Each ``images_path`` entry is looked up, in this order, as ``images/<path>``, ``images/<sample_id>/<path>``
(releases that nest one folder per sample) and ``<path>`` relative to the dataset folder.

An item is asked as multiple choice when it has a non-empty ``choice_list``: the options are listed as
``A. text``, ``B. text``, ... (``AA``, ``AB``, ... past 26 options) and the expected answer is the gold
option's letter, with the option text as an alias. The gold ``response`` may be the option text (matched
exactly, then case- and punctuation-insensitively) or already a letter (``"B"``, ``"B."``, ``"(B)"``).
Otherwise the item is open-ended and the answer is the response text.

Items that cannot be asked are skipped, and a single warning per dataset gives the counts: no images
(``images_path`` missing or empty), or a multiple-choice gold answer that is none of the options.
Structural problems raise :class:`ValueError`: no JSON file, unreadable JSON, no ``"data"`` list, a
malformed item, an unknown ``task_instruction_id``, or a missing image file.

Images are read as raw encoded bytes (``Sample.media``, ``MediaKind.IMAGES``), in ``images_path`` order;
the ``{image#N}`` / ``{table#N}`` placeholders are removed from the question text since the images are
given as the frame sequence.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from videoqa.lab.sample import Sample
from videoqa.worker.types import MediaKind

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\{(?:image|table)#\d+\}")
_LETTER = re.compile(r"^\(?([A-Za-z]{1,2})\)?[.:)]?$")

__all__ = ["load", "load_dataset", "option_label"]


def option_label(index: int) -> str:
    """The letter for option ``index`` (0-based): ``A`` ... ``Z``, then ``AA``, ``AB``, ..."""
    if index < 0:
        raise ValueError(f"option index must be >= 0, got {index}")
    label = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def load(
    root: str | Path,
    datasets: Iterable[str] | None = None,
    limit_per_dataset: int | None = None,
) -> list[Sample]:
    """All samples of every MileBench dataset folder under ``root`` (or only the named ones), by folder name.

    Without ``datasets``, a dataset folder is any non-hidden sub-folder holding a ``*.json`` file; other
    sub-folders are skipped with a warning. A named dataset that is not a folder under ``root`` raises
    :class:`ValueError`. ``limit_per_dataset`` is passed to :func:`load_dataset` as ``limit``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"MileBench root {root} is not a folder")
    if datasets is not None:
        names = sorted({datasets} if isinstance(datasets, str) else set(datasets))
        missing = [name for name in names if not (root / name).is_dir()]
        if missing:
            raise ValueError(f"MileBench root {root} has no dataset folder(s) {', '.join(missing)}")
        folders = [root / name for name in names]
    else:
        folders = []
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            if any(folder.glob("*.json")):
                folders.append(folder)
            else:
                log.warning("MileBench root %s: skipping folder %s, which has no JSON file", root, folder.name)
        if not folders:
            raise ValueError(f"MileBench root {root} has no dataset folders (sub-folders holding a JSON file)")
    samples: list[Sample] = []
    for folder in folders:
        samples.extend(load_dataset(folder, limit=limit_per_dataset))
    return samples


def load_dataset(folder: str | Path, limit: int | None = None) -> list[Sample]:
    """The samples of one MileBench dataset folder, in file order; at most ``limit`` of them.

    Reads ``<folder>/<folder name>.json``, or the only ``*.json`` file in the folder. The dataset name (the
    ``family`` and the prefix of each ``sample_id``, ``"<dataset>/<sample_id>"``) is the folder's name.
    Skipped items do not count towards ``limit``; images are read only for the samples returned.
    """
    folder = Path(folder)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if not folder.is_dir():
        raise ValueError(f"MileBench dataset folder {folder} does not exist")
    dataset = folder.name
    path = _find_json(folder)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"MileBench file {path} is not readable JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ValueError(f'MileBench file {path} is malformed: expected an object with a "data" list')
    meta = doc.get("meta_data") or {}
    if not isinstance(meta, dict):
        raise ValueError(f'MileBench file {path} is malformed: "meta_data" is not an object')
    instructions = meta.get("task_instruction") or []
    if isinstance(instructions, str):
        instructions = [instructions]

    samples: list[Sample] = []
    no_images = unmatched = 0
    for index, item in enumerate(doc["data"]):
        if limit is not None and len(samples) >= limit:
            break
        where = f"{path} item {index}"
        if not isinstance(item, dict) or not isinstance(item.get("task_instance"), dict):
            raise ValueError(f'MileBench {where} is malformed: expected an object with a "task_instance" object')
        raw_id = item.get("sample_id", index)
        instance = item["task_instance"]
        image_paths = instance.get("images_path") or []
        if not image_paths:
            no_images += 1
            continue
        if not isinstance(image_paths, list) or not all(isinstance(p, str) for p in image_paths):
            raise ValueError(f'MileBench {where} is malformed: "images_path" is not a list of paths')
        if "response" not in item:
            raise ValueError(f'MileBench {where} is malformed: no "response"')

        instruction = _instruction(instructions, item.get("task_instruction_id", 0), where)
        context = _strip_placeholders(str(instance.get("context", "")))
        question = f"{instruction}\n{context}" if instruction else context
        choices = [str(c).strip() for c in instance.get("choice_list") or []]
        responses = item["response"] if isinstance(item["response"], list) else [item["response"]]
        responses = [str(r).strip() for r in responses]
        if not responses:
            raise ValueError(f'MileBench {where} is malformed: empty "response"')

        if choices:
            gold = _gold_choice(responses[0], choices)
            if gold is None:
                unmatched += 1
                continue
            options = "\n".join(f"{option_label(i)}. {text}" for i, text in enumerate(choices))
            question += f"\nOptions:\n{options}\nAnswer with the option's letter."
            answer, aliases = option_label(gold), [choices[gold]]
        else:
            answer, aliases = responses[0], responses[1:]

        media = [_read_image(folder, raw_id, p, where) for p in image_paths]
        samples.append(
            Sample(
                sample_id=f"{dataset}/{raw_id}",
                family=dataset,
                question=question,
                answer=answer,
                kind=MediaKind.IMAGES,
                media=media,
                num_frames=len(media),
                needle=None,
                aliases=aliases,
            )
        )
    if no_images or unmatched:
        log.warning(
            "MileBench %s: skipped %d item(s) without images and %d whose gold answer is none of the options",
            dataset,
            no_images,
            unmatched,
        )
    return samples


def _find_json(folder: Path) -> Path:
    """``<folder>/<folder name>.json``, else the only ``*.json`` in the folder."""
    named = folder / f"{folder.name}.json"
    if named.is_file():
        return named
    found = sorted(p for p in folder.glob("*.json") if p.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"MileBench dataset folder {folder} has no JSON file (expected {named.name})")
    names = ", ".join(p.name for p in found)
    raise ValueError(f"MileBench dataset folder {folder} has no {named.name} and several JSON files: {names}")


def _instruction(instructions: Any, instruction_id: Any, where: str) -> str:
    """The task instruction text for ``instruction_id`` (a list index, or a key of a dict)."""
    if not instructions:
        return ""
    try:
        if isinstance(instructions, dict):
            key = str(instruction_id)
            text = instructions[key] if key in instructions else instructions[instruction_id]
        else:
            text = instructions[int(instruction_id)]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"MileBench {where}: unknown task_instruction_id {instruction_id!r}") from exc
    return str(text).strip()


def _strip_placeholders(context: str) -> str:
    """The context without ``{image#N}`` / ``{table#N}``, runs of spaces collapsed, lines right-stripped."""
    text = _PLACEHOLDER.sub(" ", context)
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    return "\n".join(lines).strip()


def _norm(text: str) -> str:
    """Case, punctuation and spacing folded, for matching a gold response against the option texts."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def _gold_choice(response: str, choices: list[str]) -> int | None:
    """Index of the gold option: the response is an option's text (exactly, then loosely) or its letter."""
    if response in choices:
        return choices.index(response)
    wanted = _norm(response)
    if wanted:
        loose = [i for i, text in enumerate(choices) if _norm(text) == wanted]
        if loose:
            return loose[0]
    letter = _LETTER.match(response)
    if letter:
        labels = [option_label(i) for i in range(len(choices))]
        if letter.group(1).upper() in labels:
            return labels.index(letter.group(1).upper())
    return None


def _read_image(folder: Path, sample_id: Any, relative: str, where: str) -> bytes:
    """The bytes of an image, found under ``images/``, ``images/<sample_id>/`` or the dataset folder."""
    candidates = [folder / "images" / relative, folder / "images" / str(sample_id) / relative, folder / relative]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_bytes()
    raise ValueError(f"MileBench {where}: image file {candidates[0]} not found (nor {candidates[1]}, {candidates[2]})")
