"""The loop's hooks (trainer/hooks.py): what the failure tests' environment asks for, read once by the
driver; a rank pauses only at its own points. The pauses themselves, killing a run there, are
tests/integration/test_train.py's, tests/integration/test_autoscaling.py's and tests/integration/test_multinode.py's."""

from __future__ import annotations

import inspect
import os
from types import SimpleNamespace

import pytest

from trainer.hooks import FailurePause, Hooks


def test_no_pause_unless_the_environment_names_a_point_and_a_file():
    assert FailurePause.from_environment({}) is None
    assert FailurePause.from_environment({"ALEXNET_DEBUG_PAUSE_STEP": "4"}) is None
    assert FailurePause.from_environment({"ALEXNET_DEBUG_PID_FILE": "/tmp/pid"}) is None


def test_points_phases_and_files():
    one = FailurePause.from_environment({"ALEXNET_DEBUG_PAUSE_STEP": "4:save", "ALEXNET_DEBUG_PID_FILE": "p"})
    assert one.files == {(4, "save"): "p"} and one.rank == 0 and one.seconds == 120.0
    several = FailurePause.from_environment({"ALEXNET_DEBUG_PAUSE_STEP": "3, 7:validate",
                                             "ALEXNET_DEBUG_PID_FILE": "p", "ALEXNET_DEBUG_PAUSE_RANK": "1",
                                             "ALEXNET_DEBUG_PAUSE_SECONDS": "5"})
    assert several.files == {(3, "step"): "p.3", (7, "validate"): "p.7:validate"}
    assert several.rank == 1 and several.seconds == 5.0
    with pytest.raises(ValueError, match="'4:later' is not STEP"):
        FailurePause.from_environment({"ALEXNET_DEBUG_PAUSE_STEP": "4:later", "ALEXNET_DEBUG_PID_FILE": "p"})


def test_only_the_named_rank_pauses_once_at_its_point(tmp_path):
    path = str(tmp_path / "pid")
    pause = FailurePause({(4, "save"): path}, rank=1, seconds=0.0)
    pause.checkpoint_written(SimpleNamespace(rank=0, step=4))  # another rank
    pause.after_step(SimpleNamespace(rank=1, step=4))  # another phase
    pause.checkpoint_written(SimpleNamespace(rank=1, step=3))  # another step
    assert not os.path.exists(path)
    pause.checkpoint_written(SimpleNamespace(rank=1, step=4))
    assert open(path).read() == str(os.getpid())


def test_the_loop_takes_hooks_and_does_nothing_without_them():
    from trainer.loop import train_worker

    assert list(inspect.signature(train_worker).parameters) == ["params", "hooks"]
    assert inspect.signature(train_worker).parameters["hooks"].default is None  # Ray Train passes params only
    run = SimpleNamespace(rank=0, step=1)
    for phase in ("after_step", "before_validation", "checkpoint_written"):
        assert getattr(Hooks(), phase)(run) is None
