"""The job behind `alexnet shard`: scan → plan → one Ray task per shard (bounded, retried) → reduce →
index, stats, manifest (written last).

    alexnet shard ~/imagenet/train out/ --split train                 # local Ray instance
    alexnet shard s3://bucket/ILSVRC2012_img_train.tar s3://bucket/in1k --split train --address auto

A rerun of the same command completes an interrupted split (finished shards are kept after their size
and sha256 are checked) and does nothing for a finished one; a different configuration into the same
output is refused unless --overwrite.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from importlib.metadata import version

from pipeline import storage
from pipeline.errors import UserError, storage_error_in, storage_error_text
from pipeline.ray_instance import own_ray
from pipeline.shard.images import CHROMA_SUBSAMPLING
from pipeline.shard.labels import check_class_names, read_class_list, read_labels, with_names
from pipeline.shard.progress import Progress, converted_text, plural
from pipeline.shard.manifest import (FORMAT_VERSION, check_writable, clear_progress, clear_split, manifest_location,
                             plan_shards, progress_location, read_manifest, rows_table, stale_temporaries,
                             write_index, write_manifest, write_shard)
from pipeline.shard.options import ShardOptions
from pipeline.shard.sources import Input, Scan, find_inputs
from pipeline.shard.stats import add_moments, empty_moments, stats_from_moments, write_stats

TRAIN = "train"


def shard_split(options: ShardOptions) -> int:
    """Shard one split; returns the exit status (0: split finished, manifest written)."""
    options.check()
    # Ray tasks run in another working directory: relative paths are this command's, fixed here
    options = dataclasses.replace(options, src=storage.absolute(options.src), out=storage.absolute(options.out),
                                  **{name: storage.absolute(getattr(options, name))
                                     for name in ("labels", "synset_map", "classes") if getattr(options, name)})
    src, out, split, labels, classes = options.src, options.out, options.split, options.labels, options.classes
    seed, shard_size, limit = options.seed, options.shard_size, options.limit
    if options.chroma not in CHROMA_SUBSAMPLING:
        raise UserError(f"--chroma {options.chroma}: use one of {', '.join(CHROMA_SUBSAMPLING)}")
    started = time.monotonic()
    labels_map = read_labels(labels, options.synset_map) if labels else None
    scan = find_inputs(src, labels_map)
    inputs = scan.inputs[:limit] if limit is not None else scan.inputs
    class_list = _class_list(out, split, classes, scan, inputs)
    _warn_if_train_source(out, split, src)
    label_of = {synset: index for index, (synset, _) in enumerate(class_list)}
    unknown = sorted({item.synset for item in inputs} - label_of.keys())
    if unknown:
        example = next(item.path for item in inputs if item.synset == unknown[0])
        raise UserError(f"{len(unknown)} synset(s) of the input are not in the class list, e.g. {unknown[0]} "
                        f"({example}); the class list comes from {_class_source(out, split, classes)}")
    config = {"format": FORMAT_VERSION, "split": split, "seed": seed, "shard_size": shard_size,
              "image_size": options.size, "jpeg_quality": options.quality, "chroma_subsampling": options.chroma,
              "inputs_sha256": _inputs_digest(inputs),
              "skipped_sha256": _digest(scan.skipped), "classes_sha256": _digest(class_list)}
    if classes or split == TRAIN:  # a split that defines its class list; others keep the train split's names
        # after the digest: WordNet's names follow from the synsets, so a split sharded before the
        # project shipped them keeps its configuration (a rerun completes it, no --overwrite)
        class_list = with_names(class_list)
    check_writable(out)
    if _already_done(out, split, config, options.overwrite):
        print(f"{split}: already complete in {out} (same configuration); nothing to do")
        return 0
    for name in stale_temporaries(out, split):  # a killed task's half-written shard, never renamed
        storage.delete(storage.join(out, name))
    storage.write_bytes_atomic(progress_location(out, split, "config.json"), json.dumps(config).encode())

    plan = plan_shards(inputs, seed, shard_size)
    progress = Progress(len(inputs), len(plan), start=started)
    records = _run_shard_tasks(options, plan, label_of, progress)
    unreadable = [entry for record in records for entry in record["skipped"]]
    if len(inputs) and len(unreadable) / len(inputs) > options.max_skip_fraction:
        reasons = "; ".join(f"{e['path']}: {e['reason']}" for e in unreadable[:3])
        raise UserError(f"{len(unreadable)} of {len(inputs)} inputs could not be used (more than "
                        f"--max-skip-fraction {options.max_skip_fraction}), e.g. {reasons}. The shards written so "
                        "far are kept; fix the inputs or raise the fraction and rerun")
    skipped = scan.skipped + unreadable  # left out by the layout rules, then unreadable inputs
    manifest = _finish(out, split, src, config, class_list, records, skipped, len(inputs) + len(scan.skipped))
    _print_summary(split, out, progress, records, skipped, manifest.get("converted"))
    return 0


def _class_source(out: str, split: str, classes: str | None) -> str:
    if classes:
        return classes
    return "the sorted synsets of the input" if split == TRAIN else manifest_location(out, TRAIN)


def _class_list(out: str, split: str, classes: str | None, scan: Scan, inputs: list[Input]) -> list[tuple[str, str]]:
    """[(synset, name)]; position = class index (docs/design.md, "Class indices")."""
    if classes:
        return read_class_list(classes)
    if split == TRAIN:
        synsets = sorted(set(scan.class_folders or ()) | {item.synset for item in inputs})
        empty = sorted(set(synsets) - {item.synset for item in scan.inputs})  # empty folders, not --limit's
        for warning in check_class_names(synsets, empty):
            print(f"warning: {warning}", file=sys.stderr)
        left_out = len(set(synsets) - set(empty) - {item.synset for item in inputs})
        if left_out:
            print(f"warning: --limit {len(inputs)}: no samples for {plural(left_out, 'class', 'classes')} of "
                  f"{len(synsets)} (their inputs come after the first {len(inputs)}); kept as classes so the "
                  "indices do not shift", file=sys.stderr)
        return [(synset, "") for synset in synsets]
    if not storage.exists(manifest_location(out, TRAIN)):
        raise UserError(f"split {split!r} takes its class indices from the train split: shard the train split "
                        f"into {out} first, or give a class list with --classes")
    manifest = read_manifest(out, TRAIN)
    return [(c["synset"], c.get("name", "")) for c in manifest["classes"]]


def _warn_if_train_source(out: str, split: str, src: str) -> None:
    """The train split's own input given again for another split: its samples would be scored as unseen."""
    location = manifest_location(out, TRAIN)
    if split == TRAIN or not storage.exists(location):
        return
    train_source = read_manifest(out, TRAIN).get("source", "").rstrip("/")
    inside = [a for a, b in ((src, train_source), (train_source, src)) if a == b or a.startswith(b.rstrip("/") + "/")]
    if train_source and inside:
        print(f"warning: {src} is (or overlaps) {train_source}, which the train split in {out} was made from: "
              f"a {split} split should hold images training never sees", file=sys.stderr)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()


def _inputs_digest(inputs: list[Input], piece: int = 2000) -> str:
    """_digest of [[key, path, synset], ...], hashed a piece at a time: the same bytes (so a rerun keeps
    its configuration) without the whole list and its JSON (~300 MB at 1.28M inputs)."""
    digest = hashlib.sha256(b"[")
    for start in range(0, len(inputs), piece):
        text = json.dumps([[i.key, i.path, i.synset] for i in inputs[start:start + piece]], separators=(",", ":"))
        digest.update(("," if start else "").encode() + text[1:-1].encode())
    digest.update(b"]")
    return digest.hexdigest()


def _already_done(out: str, split: str, config: dict, overwrite: bool) -> bool:
    """True for a finished split made the same way; refuses (or with overwrite clears) a different one."""
    previous = None
    if storage.exists(manifest_location(out, split)):
        previous = _read_json(manifest_location(out, split)).get("config")  # any format: --overwrite clears it
    elif storage.exists(progress_location(out, split, "config.json")):
        previous = _read_json(progress_location(out, split, "config.json"))
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


def _read_json(location: str) -> dict:
    try:
        return json.loads(storage.read_bytes(location))
    except json.JSONDecodeError as error:
        raise UserError(f"{location} is not valid JSON ({error}): delete it and rerun (finished shards are kept)") \
            from None


def _run_shard_tasks(options: ShardOptions, plan: list[list[Input]], label_of: dict[str, int],
                     progress: Progress) -> list[dict]:
    """One Ray task per shard, at most `max_in_flight` at once (so memory does not grow with the
    dataset), each retried by Ray on failure; records come back in shard order."""
    import ray

    if ray.is_initialized():  # the caller's connection (the demo's, a benchmark's)
        return _shard_tasks_on_ray(options, plan, label_of, progress)
    # No dashboard for an instance started here: it lives as long as this command, and its processes
    # cost more CPU than the driver does (benchmarks/bench_shard.py). Ignored when connecting to a cluster.
    try:
        with own_ray(options.address, include_dashboard=False):
            return _shard_tasks_on_ray(options, plan, label_of, progress)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"the finished shards in {options.out} are kept: give the same command again to "
                                "continue") from None


def _shard_tasks_on_ray(options: ShardOptions, plan: list[list[Input]], label_of: dict[str, int],
                        progress: Progress) -> list[dict]:
    import ray

    out, split = options.out, options.split
    limit = options.max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    # named "write_shard" in the dashboard and `ray list tasks`, whatever wraps it here
    # SPREAD, as Ray Data's read tasks: a node's disk and network share the shards' reads and writes with
    # the others from the first wave of tasks, instead of the first node with a free CPU taking them all
    task = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=True,
                      scheduling_strategy="SPREAD")(_write_shard_once_for_storage_errors)
    task = task.options(name="write_shard")
    records: list[dict | None] = [None] * len(plan)
    pending: dict = {}
    next_shard = 0
    storage_error = None
    progress.begin_work()
    while next_shard < len(plan) or pending:
        while next_shard < len(plan) and len(pending) < limit and storage_error is None:
            samples = [(item.row(), label_of[item.synset]) for item in plan[next_shard]]
            ref = task.remote(out, split, next_shard, samples, size=options.size, quality=options.quality,
                              chroma=options.chroma, with_stats=split == TRAIN)
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
            if "storage_error" in record:  # no new task; those in flight end (and clean up) first
                storage_error = storage_error or f"shard {index} of split {split!r}: {record['storage_error']}"
                continue
            record["rows"] = rows_table(record["rows"])
            progress.update(len(plan[index]), kept=record.pop("kept", False))
            records[index] = record
    if storage_error:
        raise UserError(f"{storage_error}. Finished shards are kept and no partial one is left: free space "
                        "(or fix the permissions) and give the same command again to continue")
    return records  # type: ignore[return-value]


def _write_shard_once_for_storage_errors(out: str, split: str, shard_index: int, rows: list[tuple[tuple, int]],
                                         **kwargs) -> dict:
    """The shard task: `write_shard` of (Input.row(), label) pairs, except that an error no retry can cure
    (a full disk, no permission, a read-only mount) comes back as {"storage_error": one line} instead of
    being retried 3 times by Ray, a traceback each. write_shard deletes its temporary file on the way out."""
    samples = [(Input.from_row(row), label) for row, label in rows]
    try:
        return write_shard(out, split, shard_index, samples, **kwargs)
    except OSError as error:
        cause = storage_error_in(error)
        if cause is None:
            raise
        return {"storage_error": storage_error_text(cause, out)}


def _finish(out: str, split: str, src: str, config: dict, class_list: list[tuple[str, str]],
            records: list[dict], skipped: list[dict], found: int) -> dict:
    """Index, stats (train), then the manifest (returned): the manifest's presence marks the split finished."""
    write_index(out, split, [record["rows"] for record in records])
    if split == TRAIN:
        moments = empty_moments()
        for record in records:
            moments = add_moments(moments, record["moments"])
        write_stats(out, stats_from_moments(moments))
    manifest = {
        "format": FORMAT_VERSION, "tool": f"alexnet-ray {version('alexnet-ray')}",
        "source": src if storage.is_url(src) else os.path.abspath(src),
        "split": split, "seed": config["seed"], "shard_size": config["shard_size"],
        "image_size": config["image_size"], "jpeg_quality": config["jpeg_quality"],
        "chroma_subsampling": config["chroma_subsampling"], "num_classes": len(class_list),
        "classes": [{"index": i, "synset": s, "name": n} for i, (s, n) in enumerate(class_list)],
        "shards": [{k: r[k] for k in ("name", "samples", "bytes", "sha256")} for r in records],
        "total_samples": sum(r["samples"] for r in records), "inputs_found": found,
        "skipped": skipped, "config": config,
    }
    if all("converted" in r for r in records):  # records kept from an older version's run did not count
        converted: dict[str, int] = {}
        for record in records:
            for mode, count in record["converted"].items():
                converted[mode] = converted.get(mode, 0) + count
        manifest["converted"] = dict(sorted(converted.items()))  # {input colour mode: inputs stored as RGB}
    write_manifest(out, split, manifest)
    clear_progress(out, split)
    return manifest


def _print_summary(split: str, out: str, progress: Progress, records: list[dict], skipped: list[dict],
                   converted: dict[str, int] | None) -> None:
    """Counts and rate as the progress bar's last line gave them (the same clock, the same inputs)."""
    written = sum(r["samples"] for r in records)
    print(f"{split}: {plural(written, 'sample')} written in {plural(len(records), 'shard')} -> {out}; "
          f"{plural(len(skipped), 'entry', 'entries')} skipped ({progress.rate_text()})")
    if converted:
        print(f"  {converted_text(converted)}")
    for entry in skipped[:20]:
        print(f"  skipped {entry['path']}: {entry['reason']}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more (see {manifest_location(out, split)})", file=sys.stderr)
