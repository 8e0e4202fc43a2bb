"""Label and class-list files in the forms ImageNet users actually have.

Validation labels (`--labels`), as {file name or stem: synset}:
- a CSV `file,synset` (a header line is optional);
- Kaggle's `LOC_val_solution.csv`: `ImageId,PredictionString`, the first word of which is the synset;
- the devkit's `ILSVRC2012_validation_ground_truth.txt`: line i holds the ILSVRC2012_ID of
  `ILSVRC2012_val_<i:08d>.JPEG`; its IDs are NOT sorted-synset positions, so `--synset-map` must give
  the ID -> synset table as text lines `ID synset` (e.g. `1 n02119789`).
Class lists (`--classes`): `index<TAB>synset<TAB>name` (like imagenet-classes.tsv) or `synset name words`
lines (LOC_synset_mapping.txt, synset_words.txt).
Class names otherwise come from WordNet: ilsvrc2012_synsets.tsv, shipped beside this module with
WORDNET-LICENSE.txt, names the 1000 ILSVRC-2012 synsets (docs/design.md, "Class indices").
"""

from __future__ import annotations

import csv
import functools
import io
import re
from importlib.resources import files

from pipeline import storage
from pipeline.errors import UserError

WORDNET_ID = re.compile(r"n\d{8}")  # ImageNet's synsets: n01440764 ...
SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing"}
SYNSET_TABLE = "ilsvrc2012_synsets.tsv"  # synset<TAB>name<TAB>WordNet lemmas, with a header line
_HEADER_WORDS = {"file", "filename", "file_name", "image", "imageid", "image_id", "path", "name"}


def _read_text(path: str, what: str) -> str:
    if not storage.exists(path):
        raise UserError(f"{what} {path} does not exist")
    try:
        return storage.read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text file") from None


def read_labels(path: str, synset_map: str | None = None) -> dict[str, str]:
    text = _read_text(path, "label file")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError(f"label file {path} is empty")
    if all(line.strip().isdigit() for line in lines[:10]):
        return _devkit_ground_truth(path, lines, synset_map)
    rows = list(csv.reader(io.StringIO(text)))
    rows = [row for row in rows if row and any(cell.strip() for cell in row)]
    header = [cell.strip().lower() for cell in rows[0]]
    if "predictionstring" in header:
        return _loc_solution(path, rows)
    if header[0] in _HEADER_WORDS:
        rows = rows[1:]
    labels = {}
    for number, row in enumerate(rows, start=2 if header[0] in _HEADER_WORDS else 1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise UserError(f"label file {path}, line {number}: expected 'file,synset', got {','.join(row)!r}")
        labels[row[0].strip().rsplit("/", 1)[-1]] = row[1].strip()
    return labels


def _loc_solution(path: str, rows: list[list[str]]) -> dict[str, str]:
    header = [cell.strip().lower() for cell in rows[0]]
    image_col, pred_col = header.index("imageid") if "imageid" in header else 0, header.index("predictionstring")
    labels = {}
    for number, row in enumerate(rows[1:], start=2):
        words = row[pred_col].split() if len(row) > pred_col else []
        if not words:
            raise UserError(f"label file {path}, line {number}: empty PredictionString")
        labels[row[image_col].strip()] = words[0]
    return labels


def _devkit_ground_truth(path: str, lines: list[str], synset_map: str | None) -> dict[str, str]:
    if synset_map is None:
        raise UserError(f"label file {path} holds devkit ILSVRC2012_IDs: give the ID-to-synset table with "
                        "--synset-map (text lines 'ID synset'; the IDs are not sorted-synset positions)")
    id_to_synset = read_synset_map(synset_map)
    labels = {}
    for number, line in enumerate(lines, start=1):
        ilsvrc_id = int(line.strip())
        if ilsvrc_id not in id_to_synset:
            raise UserError(f"label file {path}, line {number}: ID {ilsvrc_id} is not in {synset_map}")
        labels[f"ILSVRC2012_val_{number:08d}"] = id_to_synset[ilsvrc_id]
    return labels


def read_synset_map(path: str) -> dict[int, str]:
    if path.lower().endswith(".mat"):
        raise UserError(f"{path}: meta.mat is not read directly; write its (ILSVRC2012_ID, WNID) pairs as "
                        "text lines 'ID synset' and pass that file to --synset-map")
    table = {}
    for number, line in enumerate(_read_text(path, "synset map").splitlines(), start=1):
        words = line.replace(",", " ").split()
        if not words:
            continue
        if len(words) < 2 or not words[0].isdigit():
            raise UserError(f"synset map {path}, line {number}: expected 'ID synset', got {line.strip()!r}")
        table[int(words[0])] = words[1]
    return table


def read_class_list(path: str) -> list[tuple[str, str]]:
    """[(synset, name)] in the file's order."""
    classes = []
    for number, line in enumerate(_read_text(path, "class list").splitlines(), start=1):
        if not line.strip():
            continue
        if "\t" in line:
            cells = [c.strip() for c in line.split("\t")]
            if cells[0].isdigit() and len(cells) >= 2:
                cells = cells[1:]
            if cells[0].lower() in ("synset", "wnid", "index"):
                continue  # header
            classes.append((cells[0], cells[1] if len(cells) > 1 else ""))
        else:
            synset, _, name = line.strip().partition(" ")
            classes.append((synset, name.strip()))
    if not classes:
        raise UserError(f"class list {path} is empty")
    synsets = [s for s, _ in classes]
    if len(set(synsets)) != len(synsets):
        raise UserError(f"class list {path} names a synset twice")
    return classes


@functools.cache
def wordnet_names() -> dict[str, str]:
    """{synset: name} for the 1000 ILSVRC-2012 synsets, the name being WordNet's first lemma (e.g.
    n01440764: tench), so a dataset sharded from class folders prints names without a --classes file."""
    table = files("pipeline.shard").joinpath(SYNSET_TABLE).read_text(encoding="utf-8")
    rows = [line.split("\t") for line in table.splitlines()[1:] if line]
    return {synset: name for synset, name, _ in rows}


def with_names(classes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The class list with WordNet's name for every known synset that has no name of its own: a name from
    --classes wins; a synset WordNet's ILSVRC-2012 table lacks (a user's own class) keeps ""."""
    names = wordnet_names()
    return [(synset, name or names.get(synset, "")) for synset, name in classes]


def named_classes(classes: list[dict]) -> list[dict]:
    """A manifest's or checkpoint's class list with WordNet's name filled in where a known synset has
    none: data sharded before the sharder named classes, and the checkpoints trained on it, still print
    names."""
    filled = with_names([(c["synset"], c.get("name", "")) for c in classes])
    return [{**c, "name": name} for c, (_, name) in zip(classes, filled)]


def check_class_names(synsets: list[str], empty: list[str]) -> list[str]:
    """Warnings about class names taken from the input (no --classes); UserError when they are split
    names, i.e. the folder given holds train/ and val/ rather than class folders."""
    splits = [s for s in synsets if s.lower() in SPLIT_NAMES]
    if splits:
        raise UserError(f"the input's class folders include {', '.join(splits)}: that looks like a folder of "
                        "splits, not of classes; shard each split folder on its own (e.g. SRC/train with "
                        "--split train), or pass --classes FILE if these really are class names")
    warnings = []
    odd = [s for s in synsets if not WORDNET_ID.fullmatch(s)]
    if odd:
        warnings.append(f"{len(odd)} class name(s) are not WordNet ids (n + 8 digits), e.g. {odd[0]!r}; class "
                        "indices are their sorted positions (pass --classes FILE to pin the class list)")
    if empty:
        named = ", ".join(f"{s} (class {synsets.index(s)})" for s in empty[:5]) + (" ..." if len(empty) > 5 else "")
        holds = "class folder holds" if len(empty) == 1 else "class folders hold"
        warnings.append(f"{len(empty)} {holds} no input: {named}; kept as classes with no samples, "
                        "so the indices after them do not shift (pass --classes FILE to pin the class list)")
    return warnings
