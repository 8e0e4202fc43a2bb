"""The private parts of Ray and torch the code relies on, each behind one small function or constant:
when a new Ray or torch moves one, these fail naming the version, before a run does.

    trainer/loop.py              ray_train_report_logger: Ray Train's per-report INFO logger
    trainer/checkpoint/resume.py SNAPSHOT, SNAPSHOT_FIELDS: Ray Train's list of a run's checkpoints
    pipeline/loader/loaders.py   join_workers: a DataLoader iterator's `_shutdown_workers`

(jobs/parser.py used argparse's `_choices_actions`; it now gives each command its description when
it is added.)"""

from __future__ import annotations

import importlib
import logging

import pytest
import ray
import torch
from torch.utils.data import DataLoader

from trainer.checkpoint import resume


def test_ray_train_logs_each_report_under_the_logger_the_loop_quiets():
    from trainer.loop import RAY_TRAIN_REPORT_MODULE, ray_train_report_logger

    try:
        module = importlib.import_module(RAY_TRAIN_REPORT_MODULE)
    except ImportError as error:
        pytest.fail(f"Ray {ray.__version__} has no {RAY_TRAIN_REPORT_MODULE} ({error}): find where Ray Train "
                    f"now logs each ray.train.report and update trainer/loop.py's ray_train_report_logger")
    ours = ray_train_report_logger()
    assert getattr(module, "logger", None) is ours, (
        f"Ray {ray.__version__}: {RAY_TRAIN_REPORT_MODULE} no longer logs under {ours.name!r}: update "
        f"trainer/loop.py's ray_train_report_logger")
    assert isinstance(ours, logging.Logger)


def test_ray_train_keeps_its_checkpoint_list_where_and_as_resume_reads_it():
    try:
        from ray.train.v2._internal import constants
        from ray.train.v2._internal.execution.checkpoint import checkpoint_manager
    except ImportError as error:
        pytest.fail(f"Ray {ray.__version__} moved its checkpoint manager ({error}): trainer/checkpoint/resume.py "
                    f"reads and repairs its snapshot file")

    def fields(model) -> set[str]:
        return set(getattr(model, "model_fields", None) or model.__fields__)

    assert getattr(constants, "CHECKPOINT_MANAGER_SNAPSHOT_FILENAME", None) == resume.SNAPSHOT, (
        f"Ray {ray.__version__} names its checkpoint list otherwise than {resume.SNAPSHOT}: update "
        f"trainer/checkpoint/resume.py")
    missing = set(resume.SNAPSHOT_FIELDS) - fields(checkpoint_manager._CheckpointManagerState)
    assert not missing, (f"Ray {ray.__version__}'s checkpoint list lacks {sorted(missing)}, which "
                         f"trainer/checkpoint/resume.py reads or rewrites")
    assert "checkpoint_dir_name" in fields(checkpoint_manager._TrainingResultState), (
        f"Ray {ray.__version__}'s checkpoint list entries lack checkpoint_dir_name (trainer/checkpoint/resume.py)")


def test_a_dataloader_iterator_joins_its_workers_on_request():
    from pipeline.loader.loaders import join_workers

    items = iter(DataLoader(list(range(8)), batch_size=2, num_workers=1))
    next(items)
    processes = list(getattr(items, "_workers", []))
    try:
        join_workers(items)
    except AttributeError as error:
        pytest.fail(f"torch {torch.__version__}: a DataLoader iterator has no _shutdown_workers ({error}): "
                    f"update pipeline/loader/loaders.py's join_workers")
    assert processes and not any(process.is_alive() for process in processes), (
        f"torch {torch.__version__}: _shutdown_workers left DataLoader workers running")


@pytest.mark.parametrize("command, opening", [
    ("shard", "turn an ImageNet tree into WebDataset shards with Ray"),
    ("jobs", "list, inspect, follow or stop submitted jobs"),
    ("train", "Train AlexNet with Ray Train."),  # a description of its own
])
def test_a_commands_help_opens_with_its_one_line_help(command, opening, capsys):
    from jobs.parser import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    usage, description = capsys.readouterr().out.split("\n\n")[:2]
    assert usage.startswith(f"usage: alexnet {command}") and " ".join(description.split()).startswith(opening)
