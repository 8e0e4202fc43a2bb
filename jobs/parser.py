"""The `alexnet` command line's parser: every command, flag and help text, in one module.

jobs/cli.py runs the command it parses; jobs/submit.py parses a job's command with it before uploading
anything, so a typo fails in a second; cluster/check.py parses the commands the cluster files hold.
Nothing heavy is imported here (`alexnet --help` stays fast).
"""

from __future__ import annotations

import argparse

from trainer.config import VARIANTS

# what `alexnet --help` says first (jobs/cli.py's docstring opens with it too)
DESCRIPTION = ("AlexNet (Krizhevsky et al. 2012) on ImageNet with Ray: shard the data, train, evaluate, "
               "run on a cluster.")


def _command(sub: argparse._SubParsersAction, name: str, help: str, **kwargs) -> argparse.ArgumentParser:
    """A command; its --help opens with its one-line help unless it has a description of its own."""
    return sub.add_parser(name, help=help, **{"description": help, **kwargs})


def _add_shard(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "shard", "turn an ImageNet tree into WebDataset shards with Ray")
    p.add_argument("src", help="ImageNet folder (class folders or flat val/), ILSVRC2012_img_train.tar, or URL")
    p.add_argument("out", help="output folder or object-store URL (s3://..., gs://...)")
    p.add_argument("--split", required=True, help="split name: train, val, ...")
    p.add_argument("--labels", help="labels for a flat folder: CSV 'file,synset' (or LOC_val_solution.csv), "
                   "or the devkit's ILSVRC2012_validation_ground_truth.txt (with --synset-map)")
    p.add_argument("--synset-map", help="devkit ID map for --labels ground truth: text lines 'ILSVRC2012_ID synset' "
                   "(the (ID, WNID) pairs of the devkit's meta.mat)")
    p.add_argument("--classes", help="class list file (index, synset, name TSV); default: the train manifest "
                   "in OUT for non-train splits, else the sorted synsets found")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample order (default 0)")
    p.add_argument("--size", type=int, default=256, help="stored image side in pixels (default 256)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100 (default 95)")
    p.add_argument("--chroma", default="420", choices=["420", "444"],
                   help="JPEG chroma subsampling (default 420: faster to write and to load; 444: full colour)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    p.add_argument("--max-in-flight", type=int, default=None, help="shard tasks in flight (default 2x CPUs)")
    p.add_argument("--max-skip-fraction", type=float, default=0.01,
                   help="fail when more than this fraction of inputs is unreadable (default 0.01)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing split made differently")
    p.add_argument("--limit", type=int, default=None, help="use only the first N inputs (smoke tests)")
    p.add_argument("--custom-split", action="store_true",
                   help="accept a --split name other than train and val (e.g. test)")

    p = _command(sub, "inspect", "print what a sharded dataset holds")
    p.add_argument("dataset", help="folder or URL written by `alexnet shard`")
    p.add_argument("--verify", action="store_true", help="re-check every shard's size and sha256")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_model(sub: argparse._SubParsersAction) -> None:
    """`alexnet summary` (trainer/model.py)."""
    p = _command(sub, "summary", "the model layer by layer: output shape, parameters, device")
    p.add_argument("--variant", default="paper", choices=VARIANTS,
                   help="paper (default: LRN then pool), caffenet (pool then LRN), one-tower (no LRN, no groups)")
    p.add_argument("--input", type=int, default=224, help="input side in pixels: 224 (default) or 227")
    p.add_argument("--num-classes", type=int, default=1000, help="output classes (default 1000)")
    p.add_argument("--width", type=float, default=1.0, help="scale of every conv and hidden fc width (default 1)")
    p.add_argument("--devices", help="device labels of the two towers, e.g. cuda:0,cuda:1 "
                   "(default: two GPUs if present, else one GPU, else cpu,cpu)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


class _ListConfig(argparse.Action):
    """`alexnet train --list-config`: the keys come from trainer/config.py, the one place they live."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from trainer.config import describe_config

        print(describe_config())
        parser.exit()


def _add_training(sub: argparse._SubParsersAction) -> None:
    """`alexnet train`, `alexnet eval`, `alexnet plot` (trainer/)."""
    p = _command(sub, "train", "train AlexNet with Ray Train (paper defaults; see docs/training.md)",
                       description="Train AlexNet with Ray Train. Settings are config keys (`--list-config` "
                       "lists them), from defaults, then --config FILE, then the flags below, then --set. "
                       "The same --name again continues the run from its last checkpoint.")
    p.add_argument("--data", help="dataset folder or URL written by `alexnet shard` (train + val splits)")
    p.add_argument("--name", help="run name; the same name continues the run from its last checkpoint")
    p.add_argument("--storage", help="folder or URL holding run folders (default: runs)")
    p.add_argument("--workers", help="Ray Train workers = model replicas (default 1); MIN:MAX: elastic")
    p.add_argument("--gpus-per-worker", type=int, help="2: one tower per GPU; 0: CPU (default 0)")
    p.add_argument("--wait-timeout", metavar="SECONDS",
                   help="give up waiting for the nodes the run needs after this long (default 1800; 0: no end)")
    p.add_argument("--config", metavar="FILE|RECIPE", help="YAML, TOML or JSON file of config keys, or a shipped "
                   "recipe: imagenet (the paper), imagenette (the paper's recipe at Imagenette's size); "
                   "docs/training.md")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set lr=0.02 (repeatable)")
    p.add_argument("--fresh", action="store_true", help="delete the run folder and start over")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    p.add_argument("--list-config", action=_ListConfig,
                   help="list every config key with its default and allowed values, and exit")

    p = _command(sub, "eval", "top-1 / top-5 error of a checkpoint, centre crop or ten crops")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt, a checkpoint folder, or a run folder "
                   "(its best checkpoint); local or URL")
    p.add_argument("--data", required=True, help="dataset folder or URL with the split to score")
    p.add_argument("--split", default="val", help="split to score (default val)")
    p.add_argument("--ten-crop", action="store_true", help="the paper's ten patches, softmax averaged")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = _command(sub, "plot", "PNG plots of a run: loss and error with the lr reductions marked, and the "
                 "paper's Figure 3 (conv1 kernels per tower) with each tower's colour specificity")
    p.add_argument("run", help="run folder (STORAGE/NAME), local or URL")


def _add_in_use(sub: argparse._SubParsersAction) -> None:
    """`alexnet predict`, `alexnet export`, `alexnet neighbours`."""
    checkpoint_help = "checkpoint.pt, a checkpoint folder, or a run folder (its best checkpoint); local or URL"
    p = _command(sub, "predict", "the top-5 classes of images, prepared as the sharder and eval prepare theirs")
    p.add_argument("checkpoint", help=checkpoint_help)
    p.add_argument("inputs", nargs="+", metavar="IMAGE|FOLDER|URL", help="image files, folders of them, "
                   "object-store or http(s) URLs")
    p.add_argument("--ten-crop", action="store_true", help="the paper's ten patches, softmax averaged")
    p.add_argument("--json", action="store_true", help="print one JSON object (top-5 and logits per image)")

    p = _command(sub, "export", "a folder that runs the network without this project: "
                       "weights, classes, preprocessing, torch.export program")
    p.add_argument("checkpoint", help=checkpoint_help)
    p.add_argument("out", help="output folder (created; must not hold an export already)")

    p = _command(sub, "neighbours", "the paper's Figure 4: fc7 features of every training image "
                       "(Ray tasks), the 6 nearest to validation queries, figure4.png/json")
    p.add_argument("checkpoint", help=checkpoint_help)
    p.add_argument("--data", required=True, help="dataset folder or URL with train and val splits")
    p.add_argument("--out", help="folder or URL for features and figure (default: RUN/neighbours)")
    p.add_argument("--queries", type=int, default=8, help="validation images drawn as queries (default 8)")
    p.add_argument("--key", action="append", default=[], metavar="[SPLIT/]KEY",
                   help="a query by its sample key (val unless prefixed, e.g. train/KEY); repeatable")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn queries (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")



def _add_cluster_jobs(sub: argparse._SubParsersAction) -> None:
    """`alexnet submit`, `alexnet jobs`, `alexnet demo` (jobs/)."""
    address_help = "the cluster's dashboard URL, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS)"
    p = _command(sub, "submit", "run shard / train / eval / neighbours as a Ray job on a cluster",
                       description="Upload this project and run `alexnet COMMAND ARGS` as a Ray job. "
                       "Token auth: set RAY_AUTH_TOKEN. Exit status: 0 succeeded, the job's exit status "
                       "when it failed, 3 when it was stopped.")
    p.add_argument("--address", help=address_help)
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    p.add_argument("--gpus", type=float, default=0,
                   help="GPUs for the job's driver process, where `eval` computes (default 0; e.g. 2)")
    p.add_argument("job", nargs=argparse.REMAINDER, metavar="-- shard|train|eval|neighbours ARGS",
                   help="the command the job runs, as you would give it to `alexnet`")

    p = _command(sub, "jobs", "list, inspect, follow or stop submitted jobs")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in [("list", "every job on the cluster"),
                         ("status", "one job's state (exit status 1 when it failed or was stopped)"),
                         ("logs", "one job's output"), ("stop", "stop a running job and wait until it has")]:
        q = actions.add_parser(action, help=text, description=text)
        if action != "list":
            q.add_argument("job_id", metavar="ID", help="submission id printed by `alexnet submit`")
        if action == "logs":
            q.add_argument("--follow", action="store_true", help="stream until the job ends")
        q.add_argument("--address", help=address_help)

    p = _command(sub, "demo", "the whole system on one machine: data, shards, training, ten-crop eval, report",
                       description="Generate (or take) a small ImageNet-shaped dataset, shard it with Ray, train a "
                       "reduced-width AlexNet with the plateau schedule, evaluate with ten crops, and write "
                       "report.md / report.json into --out. Defaults: about 4 minutes on 2 idle CPU cores.")
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--images", help="a real tree instead of generated data: DIR/train/<synset>/*.JPEG and "
                   "DIR/val/, either class folders val/<synset>/ or flat files whose labels are in "
                   "DIR/val_labels.csv ('file,synset' lines, beside val/)")
    p.add_argument("--classes", type=int, default=8, help="generated classes, 2-10 (default 8)")
    p.add_argument("--train-per-class", type=int, default=100, help="generated training images per class (default 100)")
    p.add_argument("--val-per-class", type=int, default=25, help="generated validation images per class (default 25)")
    p.add_argument("--epochs", type=int, default=10, help="maximum epochs (default 10)")
    p.add_argument("--width", type=float, default=0.25, help="model width scale (default 0.25)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--lr", type=float, default=0.005, help="initial learning rate (default 0.005: at width 0.25 "
                   "and batch 32 the paper's 0.01 spikes to chance on some seeds)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice: generated images, shard "
                   "order, init, augmentation (default 0); the report records it")
    p.add_argument("--address", help="an existing Ray cluster (default: RAY_ADDRESS, else a local instance)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("alexnet-ray")
    except PackageNotFoundError:  # a checkout used through PYTHONPATH, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet", description=DESCRIPTION,
                                     epilog="`alexnet COMMAND --help` explains each command.")
    parser.add_argument("--version", action="version", version=f"alexnet-ray {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_shard(sub)
    _add_model(sub)
    _add_training(sub)
    _add_in_use(sub)
    _add_cluster_jobs(sub)
    return parser

