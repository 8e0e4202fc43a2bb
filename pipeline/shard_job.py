"""The job behind `alexnet shard`: scan → plan → one Ray task per shard (bounded, retried) → reduce →
index, stats, manifest (written last).

    alexnet shard ~/imagenet/train out/ --split train                 # local Ray instance
    alexnet shard s3://bucket/ILSVRC2012_img_train.tar s3://bucket/in1k --split train --address auto

A rerun of the same command completes an interrupted split (finished shards are kept after their size
and sha256 are checked) and does nothing for a finished one; a different configuration into the same
output is refused unless --overwrite.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version

from pipeline import storage
from pipeline.errors import UserError
from pipeline.images import CHROMA_SUBSAMPLING
from pipeline.labels import read_class_list, read_labels
from pipeline.progress import Progress
from pipeline.shards import (FORMAT_VERSION, check_writable, clear_progress, clear_split, manifest_location,
                             plan_shards, progress_location, read_manifest, rows_table, write_index,
                             write_manifest, write_shard)
from pipeline.sources import Input, find_inputs
from pipeline.stats import add_moments, empty_moments, stats_from_moments, write_stats

TRAIN = "train"


def shard_split(*, src: str, out: str, split: str, labels: str | None = None, synset_map: str | None = None,
                classes: str | None = None, shard_size: int = 1000, seed: int = 0, size: int = 256,
                quality: int = 95, chroma: str = "420", address: str | None = None, max_in_flight: int | None = None,
                max_skip_fraction: float = 0.01, overwrite: bool = False, limit: int | None = None) -> int:
    """Shard one split; returns the exit status (0: split finished, manifest written)."""
    _check_flags(split, shard_size, size, quality, max_skip_fraction, max_in_flight)
    if chroma not in CHROMA_SUBSAMPLING:
        raise UserError(f"--chroma {chroma}: use one of {', '.join(CHROMA_SUBSAMPLING)}")
    started = time.monotonic()
    labels_map = read_labels(labels, synset_map) if labels else None
    inputs = find_inputs(src, labels_map)
    if limit is not None:
        inputs = inputs[:limit]
    class_list = _class_list(out, split, classes, inputs)
    label_of = {synset: index for index, (synset, _) in enumerate(class_list)}
    unknown = sorted({item.synset for item in inputs} - label_of.keys())
    if unknown:
        example = next(item.path for item in inputs if item.synset == unknown[0])
        raise UserError(f"{len(unknown)} synset(s) of the input are not in the class list, e.g. {unknown[0]} "
                        f"({example}); the class list comes from {_class_source(out, split, classes)}")
    config = {"format": FORMAT_VERSION, "split": split, "seed": seed, "shard_size": shard_size,
              "image_size": size, "jpeg_quality": quality, "chroma_subsampling": chroma,
              "inputs_sha256": _digest([[i.key, i.path, i.synset] for i in inputs]),
              "classes_sha256": _digest(class_list)}
    check_writable(out)
    if _already_done(out, split, config, overwrite):
        print(f"{split}: already complete in {out} (same configuration); nothing to do")
        return 0
    storage.write_bytes_atomic(progress_location(out, split, "config.json"), json.dumps(config).encode())

    plan = plan_shards(inputs, seed, shard_size)
    records = _run_shard_tasks(out, split, plan, label_of, size=size, quality=quality, chroma=chroma,
                               address=address, max_in_flight=max_in_flight)
    skipped = [entry for record in records for entry in record["skipped"]]
    if len(inputs) and len(skipped) / len(inputs) > max_skip_fraction:
        reasons = "; ".join(f"{e['path']}: {e['reason']}" for e in skipped[:3])
        raise UserError(f"{len(skipped)} of {len(inputs)} inputs could not be used (more than "
                        f"--max-skip-fraction {max_skip_fraction}), e.g. {reasons}. The shards written so "
                        "far are kept; fix the inputs or raise the fraction and rerun")
    _finish(out, split, src, config, class_list, records, skipped, len(inputs))
    _print_summary(split, out, len(inputs), records, skipped, time.monotonic() - started)
    return 0


def _check_flags(split: str, shard_size: int, size: int, quality: int, max_skip: float,
                 max_in_flight: int | None) -> None:
    if not split or not split.replace("_", "").isalnum():
        raise UserError(f"--split {split!r}: use letters, digits and '_' only (it names the shard files)")
    if shard_size < 1:
        raise UserError(f"--shard-size {shard_size}: must be at least 1")
    if size < 8:
        raise UserError(f"--size {size}: must be at least 8 pixels")
    if not 1 <= quality <= 100:
        raise UserError(f"--quality {quality}: must be between 1 and 100")
    if not 0 <= max_skip <= 1:
        raise UserError(f"--max-skip-fraction {max_skip}: must be between 0 and 1")
    if max_in_flight is not None and max_in_flight < 1:
        raise UserError(f"--max-in-flight {max_in_flight}: must be at least 1")


def _class_source(out: str, split: str, classes: str | None) -> str:
    if classes:
        return classes
    return "the sorted synsets of the input" if split == TRAIN else manifest_location(out, TRAIN)


def _class_list(out: str, split: str, classes: str | None, inputs: list[Input]) -> list[tuple[str, str]]:
    """[(synset, name)]; position = class index (DESIGN.md, "Class indices")."""
    if classes:
        return read_class_list(classes)
    if split == TRAIN:
        return [(synset, "") for synset in sorted({item.synset for item in inputs})]
    if not storage.exists(manifest_location(out, TRAIN)):
        raise UserError(f"split {split!r} takes its class indices from the train split: shard the train split "
                        f"into {out} first, or give a class list with --classes")
    manifest = read_manifest(out, TRAIN)
    return [(c["synset"], c.get("name", "")) for c in manifest["classes"]]


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()


def _already_done(out: str, split: str, config: dict, overwrite: bool) -> bool:
    """True for a finished split made the same way; refuses (or with overwrite clears) a different one."""
    previous = None
    if storage.exists(manifest_location(out, split)):
        previous = read_manifest(out, split).get("config")
    elif storage.exists(progress_location(out, split, "config.json")):
        previous = json.loads(storage.read_bytes(progress_location(out, split, "config.json")))
    finished = storage.exists(manifest_location(out, split))
    if previous == config and finished and not overwrite:
        return True
    if previous is not None and previous != config:
        if not overwrite:
            changed = ", ".join(f"{k} {previous.get(k)!r} -> {v!r}" for k, v in config.items() if previous.get(k) != v)
            state = "a finished" if finished else "an unfinished"
            raise UserError(f"{out} already holds {state} {split!r} split made differently ({changed}); "
                            "pass --overwrite to replace it, or choose another output")
    if overwrite and (previous is not None or finished):
        clear_split(out, split, with_stats=split == TRAIN)
    return False


def _run_shard_tasks(out: str, split: str, plan: list[list[Input]], label_of: dict[str, int], *, size: int,
                     quality: int, chroma: str, address: str | None, max_in_flight: int | None) -> list[dict]:
    """One Ray task per shard, at most `max_in_flight` at once (so memory does not grow with the
    dataset), each retried by Ray on failure; records come back in shard order."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level="WARNING", configure_logging=True)
    limit = max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    task = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=True)(write_shard)
    records: list[dict | None] = [None] * len(plan)
    pending: dict = {}
    progress = Progress(sum(len(s) for s in plan), len(plan))
    next_shard = 0
    while next_shard < len(plan) or pending:
        while next_shard < len(plan) and len(pending) < limit:
            samples = [(item, label_of[item.synset]) for item in plan[next_shard]]
            ref = task.remote(out, split, next_shard, samples, size=size, quality=quality, chroma=chroma,
                              with_stats=split == TRAIN)
            pending[ref] = next_shard
            next_shard += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            index = pending.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.RayError as error:
                cause = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                if "No module named" in cause:
                    cause += " (install alexnet-ray on every Ray node, or run it with `alexnet submit`)"
                raise UserError(f"shard {index} of split {split!r} failed after retries: {cause}. Finished "
                                "shards are kept: rerun the same command to continue") from None
            record["rows"] = rows_table(record["rows"])
            records[index] = record
            progress.update(len(plan[index]))
    return records  # type: ignore[return-value]


def _finish(out: str, split: str, src: str, config: dict, class_list: list[tuple[str, str]],
            records: list[dict], skipped: list[dict], found: int) -> None:
    """Index, stats (train), then the manifest: the manifest's presence marks the split finished."""
    write_index(out, split, [record["rows"] for record in records])
    if split == TRAIN:
        moments = empty_moments()
        for record in records:
            moments = add_moments(moments, record["moments"])
        write_stats(out, stats_from_moments(moments))
    manifest = {
        "format": FORMAT_VERSION, "tool": f"alexnet-ray {version('alexnet-ray')}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": src if storage.is_url(src) else os.path.abspath(src),
        "split": split, "seed": config["seed"], "shard_size": config["shard_size"],
        "image_size": config["image_size"], "jpeg_quality": config["jpeg_quality"],
        "chroma_subsampling": config["chroma_subsampling"], "num_classes": len(class_list),
        "classes": [{"index": i, "synset": s, "name": n} for i, (s, n) in enumerate(class_list)],
        "shards": [{k: r[k] for k in ("name", "samples", "bytes", "sha256")} for r in records],
        "total_samples": sum(r["samples"] for r in records), "inputs_found": found,
        "skipped": skipped, "config": config,
    }
    write_manifest(out, split, manifest)
    clear_progress(out, split)


def _print_summary(split: str, out: str, found: int, records: list[dict], skipped: list[dict],
                   seconds: float) -> None:
    written = sum(r["samples"] for r in records)
    print(f"{split}: {found} inputs found, {written} samples written in {len(records)} shards, "
          f"{len(skipped)} skipped -> {out} ({seconds:.1f}s, {written / max(seconds, 1e-9):.0f} images/s)")
    for entry in skipped[:20]:
        print(f"  skipped {entry['path']}: {entry['reason']}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more (see {manifest_location(out, split)})", file=sys.stderr)
