"""`alexnet inspect OUT [--verify]`: what a sharded dataset holds, read from its manifests (no tar is
opened unless --verify, which re-reads every shard: its size and sha256 against the manifest, its
samples (count, key at each position, label, image CRC32C) against the manifest and the index, and
reports temporary files a killed run left behind)."""

from __future__ import annotations

import json
from contextlib import nullcontext

from pipeline import storage
from pipeline.errors import UserError
from pipeline.loader.index import SampleIndex
from pipeline.loader.tar_reader import ShardReadError, iter_samples, map_file
from pipeline.shard.manifest import (PROGRESS_DIR, progress_location, read_manifest, sha256_of, stale_temporaries,
                                     valid_record)
from pipeline.shard.progress import converted_text, plural
from pipeline.shard.stats import STATS_FILE, read_stats


def find_splits(dataset: str) -> list[str]:
    return [name[: -len(".manifest.json")] for name in storage.list_names(dataset) if name.endswith(".manifest.json")]


def verify_split(dataset: str, split: str, manifest: dict) -> list[str]:
    """One line per shard that is missing or differs from the manifest or the index; [] when all match."""
    shards = tuple((s["name"], int(s["samples"])) for s in manifest["shards"])
    problems = []
    try:
        index = SampleIndex.read(dataset, split, shards, int(manifest["num_classes"]))
    except UserError as error:
        index = None
        problems.append(str(error))
    for number, shard in enumerate(manifest["shards"]):
        location = storage.join(dataset, shard["name"])
        if not storage.exists(location):
            problems.append(f"{shard['name']}: missing")
            continue
        if storage.size(location) != shard["bytes"]:
            problems.append(f"{shard['name']}: {storage.size(location)} bytes, manifest says {shard['bytes']}")
        elif sha256_of(location) != shard["sha256"]:
            problems.append(f"{shard['name']}: sha256 differs from the manifest")
        if index is not None:
            problems += _check_samples(location, shard["name"], number, int(shard["samples"]), index)
    return problems


def _check_samples(location: str, name: str, number: int, samples: int, index: SampleIndex) -> list[str]:
    """The shard's samples against the index, position by position, and their count against the
    manifest; the first problem of the shard (later positions follow from it)."""
    opened = storage.open_input(location) if storage.is_url(location) else nullcontext(map_file(location))
    try:
        with opened as source:
            for position, key, members in iter_samples(source, name, 0, samples, total=samples):
                index.check(name, number, position, key, members)
    except ShardReadError as error:
        return [str(error)]
    return []


def inspect_dataset(dataset: str, verify: bool = False, as_json: bool = False) -> int:
    """Print the summary; exit status 1 when --verify finds a bad shard."""
    if not storage.is_dir(dataset):
        raise UserError(f"{dataset} is not a folder (or URL) written by `alexnet shard`")
    splits = find_splits(dataset)
    unfinished = [name for name in _progress_splits(dataset) if name not in splits]
    if not splits and not unfinished:
        raise UserError(f"{dataset} holds no finished split: no <split>.manifest.json")
    report: dict = {"dataset": dataset, "splits": {}, "unfinished": unfinished}
    if verify:  # what a killed run kept: its finished shards, checked against their records
        report["unfinished_shards"] = {name: kept_shards(dataset, name) for name in unfinished}
    status = 0
    for split in splits:
        manifest = read_manifest(dataset, split)
        entry = {
            "shards": len(manifest["shards"]), "samples": manifest["total_samples"],
            "inputs_found": manifest["inputs_found"], "skipped": manifest["skipped"],
            "classes": manifest["num_classes"], "bytes": sum(s["bytes"] for s in manifest["shards"]),
            "image_size": manifest["image_size"], "jpeg_quality": manifest["jpeg_quality"],
            "source": manifest["source"],
            # {colour mode: inputs stored as RGB}; None for a manifest written before they were counted
            "converted": manifest.get("converted"),
            "class_names": [[c["synset"], c.get("name", "")] for c in manifest["classes"]],
        }
        if verify:
            entry["problems"] = verify_split(dataset, split, manifest)
            status = status or (1 if entry["problems"] else 0)
        report["splits"][split] = entry
    if verify:
        report["temporaries"] = stale_temporaries(dataset)
        status = status or (1 if report["temporaries"] else 0)
    if storage.exists(storage.join(dataset, STATS_FILE)):
        report["stats"] = read_stats(dataset)
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        _print_report(report, verify)
    return status


def kept_shards(dataset: str, split: str) -> dict:
    """An unfinished split's shards with a record: {"kept": names that match it, "bad": names that do
    not (the rerun writes those again)}."""
    names = sorted(n[:-len(".json")] for n in storage.list_names(progress_location(dataset, split))
                   if n.endswith(".tar.json"))
    kept = [name for name in names if valid_record(dataset, split, name) is not None]
    return {"kept": kept, "bad": [name for name in names if name not in kept]}


def _progress_splits(dataset: str) -> list[str]:
    """Splits with a started run's config record (finished ones lose theirs when the manifest lands)."""
    return [name for name in _subfolders(storage.join(dataset, PROGRESS_DIR))
            if storage.exists(progress_location(dataset, name, "config.json"))]


def _subfolders(location: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, path = storage.resolve(location)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except (FileNotFoundError, OSError):
        return []
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def _print_report(report: dict, verify: bool) -> None:
    print(f"dataset {report['dataset']}")
    for split, e in report["splits"].items():
        print(f"  {split}: {plural(e['samples'], 'sample')} in {plural(e['shards'], 'shard')} "
              f"({e['bytes'] / 1e6:.1f} MB), {plural(e['classes'], 'class', 'classes')}, "
              f"{e['image_size']}px JPEG q{e['jpeg_quality']}, "
              f"{len(e['skipped'])} of {e['inputs_found']} inputs skipped; from {e['source']}")
        named = [f"{synset} {name}".strip() for synset, name in e.get("class_names", [])]
        if named:
            print(f"    classes: {', '.join(named[:4])}{', ...' if len(named) > 4 else ''} "
                  f"({sum(1 for _, name in e['class_names'] if name)} of {len(named)} named)")
        print("    " + (converted_text(e["converted"]) if e.get("converted") is not None else
                        "inputs converted to RGB: not counted (an older `alexnet shard` wrote this manifest)"))
        for skipped in e["skipped"][:10]:
            print(f"    skipped {skipped['path']}: {skipped['reason']}")
        if len(e["skipped"]) > 10:
            print(f"    ... and {len(e['skipped']) - 10} more (--json lists all)")
        if verify:
            print("    verify: " + ("all shards match the manifest and the index" if not e["problems"] else "FAILED"))
            for problem in e["problems"]:
                print(f"      {problem}")
    for name in report.get("temporaries", []):
        print(f"  leftover temporary file {name} (a killed `alexnet shard` run's: rerunning that command "
              "removes it)")
    for split in report["unfinished"]:
        print(f"  {split}: unfinished (rerun its `alexnet shard` command to complete it)")
        if verify:
            shards = report["unfinished_shards"][split]
            print(f"    verify: {len(shards['kept'])} finished shard{'s' if len(shards['kept']) != 1 else ''} "
                  "kept (size and sha256 match their records)"
                  + (f"; {', '.join(shards['bad'])} will be written again" if shards["bad"] else ""))
    if verify and not report.get("temporaries"):
        print("  no leftover temporary files")
    if "stats" in report:
        s = report["stats"]
        fmt = lambda values: "(" + ", ".join(f"{v:.2f}" for v in values) + ")"  # noqa: E731
        print(f"  stats (0-255): mean {fmt(s['mean_rgb'])}, std {fmt(s['std_rgb'])}, "
              f"eigenvalues {fmt(s['eigenvalues'])}, {s['pixel_count']} pixels")
