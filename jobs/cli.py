"""AlexNet (Krizhevsky et al. 2012) on ImageNet with Ray: shard the data, train, evaluate, run on a cluster.

    alexnet shard SRC OUT --split train        # ImageNet tree -> WebDataset shards (Ray tasks)
    alexnet inspect OUT [--verify]             # what a sharded dataset holds
    alexnet summary [--variant paper]          # the model, layer by layer
    alexnet train --data OUT --name RUN        # Ray Train job (local Ray, or --address)
    alexnet eval --checkpoint CKPT --data OUT  # top-1 / top-5 error, centre or ten crops
    alexnet plot RUN                           # loss / error curves, Figure 3 and its colour scores
    alexnet predict CKPT photo.jpg DIR/ URL    # top-5 classes of photos
    alexnet export CKPT OUT                    # the network for use without this project
    alexnet neighbours CKPT --data OUT         # the paper's Figure 4 (Ray tasks over the shards)
    alexnet submit -- train ...                # the same commands as Ray jobs on a cluster
    alexnet jobs list|status|logs|stop         # manage submitted jobs
    alexnet demo --out DIR                     # the whole system on a small dataset, one machine

Each command calls one handler here; the parser (commands, flags, help) is jobs/parser.py, which
jobs/submit.py shares. Heavy modules (ray, torch) are imported inside the handlers so `alexnet --help`
stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from jobs.parser import build_parser
from pipeline.errors import UserError, storage_error_in, storage_error_text


def _shard(args: argparse.Namespace) -> int:
    from pipeline.shard.job import shard_split
    from pipeline.shard.options import ShardOptions

    return shard_split(ShardOptions.from_args(args))


def _inspect(args: argparse.Namespace) -> int:
    from pipeline.shard.inspect import inspect_dataset

    return inspect_dataset(args.dataset, verify=args.verify, as_json=args.json)


def _summary(args: argparse.Namespace) -> int:
    from trainer.use.summary import print_summary

    if not 223 <= args.input <= 227:
        raise UserError(f"--input {args.input}: AlexNet takes square inputs of 223 to 227 pixels "
                        "(224, the paper's crop, or 227, Caffe's)")

    return print_summary(args.variant, args.input, args.num_classes, args.width, args.json,
                         devices=args.devices.split(",") if args.devices else None)


def _train(args: argparse.Namespace) -> int:
    from trainer.config import resolve_config
    from trainer.driver.launch import train

    config = resolve_config(args.config, args.set, data=args.data, name=args.name, storage=args.storage,
                            workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                            wait_timeout=args.wait_timeout)
    return train(config, address=args.address, fresh=args.fresh)


def _checkpoint_exists(location: str) -> None:
    """Before the command imports torch (~3 s): a mistyped checkpoint path fails at once."""
    from trainer.checkpoint.checkpoint_location import resolve_location

    resolve_location(location)


def _eval(args: argparse.Namespace) -> int:
    _checkpoint_exists(args.checkpoint)
    from trainer.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(args.checkpoint, args.data, ten_crop=args.ten_crop, as_json=args.json,
                               batch_size=args.batch_size, split=args.split)


def _plot(args: argparse.Namespace) -> int:
    from trainer.report import PLOTS_FOLDER, plot_run

    for location in plot_run(args.run):
        print(location)
    from pipeline import storage
    from trainer import checkpoint, figure3

    try:
        location = checkpoint.resolve_location(args.run)
    except UserError:
        print(f"no checkpoint in {args.run} yet: no Figure 3")
        return 0
    state = checkpoint.load(location)
    run_name = args.run.rstrip("/").rsplit("/", 1)[-1]
    png, summary = figure3.write(state["model"], storage.join(args.run, PLOTS_FOLDER),
                                 title=f"{run_name}, checkpoint after epoch {state['epoch']}")
    print(png)
    print(figure3.describe(summary))
    return 0


# --- the trained network in use (trainer/use/predict.py, trainer/use/export.py, trainer/use/neighbours.py) ---

def _predict(args: argparse.Namespace) -> int:
    _checkpoint_exists(args.checkpoint)
    from trainer.use.predict import predict

    return predict(args.checkpoint, args.inputs, ten_crop=args.ten_crop, as_json=args.json)


def _export(args: argparse.Namespace) -> int:
    _checkpoint_exists(args.checkpoint)
    from trainer.use.export import export

    return export(args.checkpoint, args.out)


def _neighbours(args: argparse.Namespace) -> int:
    _checkpoint_exists(args.checkpoint)
    from trainer.use.neighbours import neighbours

    return neighbours(args.checkpoint, args.data, out=args.out, queries=args.queries, keys=args.key,
                      seed=args.seed, address=args.address, batch_size=args.batch_size)


def _submit(args: argparse.Namespace) -> int:
    from jobs.submit import submit

    return submit(args.job, address=args.address, wait=not args.no_wait, gpus=args.gpus)


def _jobs(args: argparse.Namespace) -> int:
    from jobs import jobs_client

    if args.action == "list":
        return jobs_client.list_jobs(args.address)
    if args.action == "status":
        return jobs_client.job_status(args.address, args.job_id)
    if args.action == "logs":
        return jobs_client.job_logs(args.address, args.job_id, follow=args.follow)
    return jobs_client.stop_job(args.address, args.job_id)


def _demo(args: argparse.Namespace) -> int:
    from jobs.demo import DemoOptions, run_demo

    return run_demo(args.out, DemoOptions.from_args(args))


# each command's handler, by the name the parser gives it
HANDLERS = {"shard": _shard, "inspect": _inspect, "summary": _summary, "train": _train, "eval": _eval,
            "plot": _plot, "predict": _predict, "export": _export, "neighbours": _neighbours,
            "submit": _submit, "jobs": _jobs, "demo": _demo}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        try:
            return int(HANDLERS[args.command](args) or 0)
        except UserError as error:
            print(f"alexnet {args.command}: error: {error}", file=sys.stderr)
            return 2
        except OSError as error:  # the command's own process met a full disk, a missing permission, ...
            cause = storage_error_in(error)
            if cause is None:
                raise
            print(f"alexnet {args.command}: error: {storage_error_text(cause, 'the output')}; what was "
                  "finished is kept: free space (or fix the permissions) and give the same command again "
                  "to continue", file=sys.stderr)
            return 2
        except KeyboardInterrupt as interrupt:  # its text, if any, says how to continue
            print(f"alexnet {args.command}: interrupted" + (f"; {interrupt}" if str(interrupt) else ""),
                  file=sys.stderr)
            return 130
    except BrokenPipeError:  # `alexnet ... | head`: the reader has all it wanted
        # Python flushes stdout again at exit; point it at /dev/null so that flush cannot fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command cut off by its pipe


if __name__ == "__main__":
    sys.exit(main())
