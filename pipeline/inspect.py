"""`alexnet inspect OUT [--verify]`: what a sharded dataset holds, read from its manifests (no tar is
opened unless --verify, which re-reads every shard and checks its size and sha256)."""

from __future__ import annotations

import json

from pipeline import storage
from pipeline.errors import UserError
from pipeline.shards import PROGRESS_DIR, progress_location, read_manifest, sha256_of
from pipeline.stats import STATS_FILE, read_stats


def find_splits(dataset: str) -> list[str]:
    return [name[: -len(".manifest.json")] for name in storage.list_names(dataset) if name.endswith(".manifest.json")]


def verify_split(dataset: str, manifest: dict) -> list[str]:
    """One line per shard that is missing or differs from the manifest; [] when all match."""
    problems = []
    for shard in manifest["shards"]:
        location = storage.join(dataset, shard["name"])
        if not storage.exists(location):
            problems.append(f"{shard['name']}: missing")
        elif storage.size(location) != shard["bytes"]:
            problems.append(f"{shard['name']}: {storage.size(location)} bytes, manifest says {shard['bytes']}")
        elif sha256_of(location) != shard["sha256"]:
            problems.append(f"{shard['name']}: sha256 differs from the manifest")
    return problems


def inspect_dataset(dataset: str, verify: bool = False, as_json: bool = False) -> int:
    """Print the summary; exit status 1 when --verify finds a bad shard."""
    if not storage.is_dir(dataset):
        raise UserError(f"{dataset} is not a folder (or URL) written by `alexnet shard`")
    splits = find_splits(dataset)
    unfinished = [name for name in _progress_splits(dataset) if name not in splits]
    if not splits:
        hint = f" (unfinished: {', '.join(unfinished)}; rerun its `alexnet shard` command)" if unfinished else ""
        raise UserError(f"{dataset} holds no finished split: no <split>.manifest.json{hint}")
    report: dict = {"dataset": dataset, "splits": {}, "unfinished": unfinished}
    status = 0
    for split in splits:
        manifest = read_manifest(dataset, split)
        entry = {
            "shards": len(manifest["shards"]), "samples": manifest["total_samples"],
            "inputs_found": manifest["inputs_found"], "skipped": manifest["skipped"],
            "classes": manifest["num_classes"], "bytes": sum(s["bytes"] for s in manifest["shards"]),
            "image_size": manifest["image_size"], "jpeg_quality": manifest["jpeg_quality"],
            "source": manifest["source"], "created": manifest["created"],
        }
        if verify:
            entry["problems"] = verify_split(dataset, manifest)
            status = status or (1 if entry["problems"] else 0)
        report["splits"][split] = entry
    if storage.exists(storage.join(dataset, STATS_FILE)):
        report["stats"] = read_stats(dataset)
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        _print_report(report, verify)
    return status


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
        print(f"  {split}: {e['samples']} samples in {e['shards']} shards ({e['bytes'] / 1e6:.1f} MB), "
              f"{e['classes']} classes, {e['image_size']}px JPEG q{e['jpeg_quality']}, "
              f"{len(e['skipped'])} of {e['inputs_found']} inputs skipped; from {e['source']} at {e['created']}")
        for skipped in e["skipped"][:10]:
            print(f"    skipped {skipped['path']}: {skipped['reason']}")
        if len(e["skipped"]) > 10:
            print(f"    ... and {len(e['skipped']) - 10} more (--json lists all)")
        if verify:
            print("    verify: " + ("all shards match the manifest" if not e["problems"] else "FAILED"))
            for problem in e["problems"]:
                print(f"      {problem}")
    for split in report["unfinished"]:
        print(f"  {split}: unfinished (rerun its `alexnet shard` command to complete it)")
    if "stats" in report:
        s = report["stats"]
        fmt = lambda values: "(" + ", ".join(f"{v:.2f}" for v in values) + ")"  # noqa: E731
        print(f"  stats (0-255): mean {fmt(s['mean_rgb'])}, std {fmt(s['std_rgb'])}, "
              f"eigenvalues {fmt(s['eigenvalues'])}, {s['pixel_count']} pixels")
