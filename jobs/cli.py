"""`alexnet`: the one command-line program. Parsing only; each subcommand calls one function.

    alexnet shard SRC OUT --split train        # ImageNet tree -> WebDataset shards (Ray tasks)
    alexnet inspect OUT [--verify]             # what a sharded dataset holds
    alexnet summary [--variant paper]          # the model, layer by layer
    alexnet train --data OUT --name RUN        # Ray Train job (local Ray, or --address)
    alexnet eval --checkpoint CKPT --data OUT  # top-1 / top-5 error, centre or ten crops
    alexnet plot RUN                           # loss / error curves of a run
    alexnet submit -- train ...                # the same commands as Ray jobs on a cluster
    alexnet jobs list|status|logs|stop         # manage submitted jobs
    alexnet demo --out DIR                     # the whole system on a small dataset, one machine

Heavy modules (ray, torch) are imported inside the handlers so `alexnet --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import UserError


def _shard(args: argparse.Namespace) -> int:
    from pipeline.shard_job import shard_split

    return shard_split(
        src=args.src,
        out=args.out,
        split=args.split,
        labels=args.labels,
        synset_map=args.synset_map,
        classes=args.classes,
        shard_size=args.shard_size,
        seed=args.seed,
        size=args.size,
        quality=args.quality,
        address=args.address,
        max_in_flight=args.max_in_flight,
        max_skip_fraction=args.max_skip_fraction,
        overwrite=args.overwrite,
        limit=args.limit,
    )


def _inspect(args: argparse.Namespace) -> int:
    from pipeline.inspect import inspect_dataset

    return inspect_dataset(args.dataset, verify=args.verify, as_json=args.json)


def _add_shard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shard", help="turn an ImageNet tree into WebDataset shards with Ray")
    p.add_argument("src", help="ImageNet folder (class folders or flat val/), ILSVRC2012_img_train.tar, or URL")
    p.add_argument("out", help="output folder or object-store URL (s3://..., gs://...)")
    p.add_argument("--split", required=True, help="split name: train, val, ...")
    p.add_argument("--labels", help="labels for a flat folder: CSV 'file,synset' (or LOC_val_solution.csv), "
                   "or the devkit's ILSVRC2012_validation_ground_truth.txt (with --synset-map)")
    p.add_argument("--synset-map", help="devkit meta: a 'ILSVRC2012_ID synset' text file or meta.mat")
    p.add_argument("--classes", help="class list file (index, synset, name TSV); default: the train manifest "
                   "in OUT for non-train splits, else the sorted synsets found")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample order (default 0)")
    p.add_argument("--size", type=int, default=256, help="stored image side in pixels (default 256)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100 (default 95)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    p.add_argument("--max-in-flight", type=int, default=None, help="shard tasks in flight (default 2x CPUs)")
    p.add_argument("--max-skip-fraction", type=float, default=0.01,
                   help="fail when more than this fraction of inputs is unreadable (default 0.01)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing split made differently")
    p.add_argument("--limit", type=int, default=None, help="use only the first N inputs (smoke tests)")
    p.set_defaults(handler=_shard)

    p = sub.add_parser("inspect", help="print what a sharded dataset holds")
    p.add_argument("dataset", help="folder or URL written by `alexnet shard`")
    p.add_argument("--verify", action="store_true", help="re-check every shard's size and sha256")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_inspect)


def _add_model(sub: argparse._SubParsersAction) -> None:
    """`alexnet summary` (trainer/model.py)."""


def _add_training(sub: argparse._SubParsersAction) -> None:
    """`alexnet train`, `alexnet eval`, `alexnet plot` (trainer/)."""


def _add_cluster_jobs(sub: argparse._SubParsersAction) -> None:
    """`alexnet submit`, `alexnet jobs`, `alexnet demo` (jobs/)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_shard(sub)
    _add_model(sub)
    _add_training(sub)
    _add_cluster_jobs(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as error:
        print(f"alexnet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
