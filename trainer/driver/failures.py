"""Which failures Ray Train may retry: never a user error.

Ray Train 2.60 retries every worker-group error up to FailureConfig(max_failures) times; its failure
policy cannot be replaced (`create_failure_policy` always builds the default one). What it does offer
is the public `UserCallback`, run in the controller after each poll that found worker errors, and an
exception raised there becomes a `ControllerError`, which the default policy never retries. So a
worker that meets an error no retry can cure raises `UserError` (a missing or unreadable input, a
checkpoint that does not fit the model); this callback turns it into a stop at the first attempt, and
the driver prints the worker's one-line message instead of 90-130 lines of traceback.
"""

from __future__ import annotations

from ray.train import UserCallback

from pipeline.errors import UserError, storage_error_in, storage_error_text


RUN_FOLDER = "the run folder"  # where a storage error happened when it names no file (the driver knows which)


class NotRetried(Exception):
    """A worker's UserError, carried out of the controller."""


class StopOnUserError(UserCallback):
    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        for rank, error in sorted(worker_exceptions.items()):
            cause = user_error_in(error)
            if cause is not None:
                raise NotRetried(f"rank {rank}: {cause}")


def user_error_in(error: BaseException | None) -> UserError | NotRetried | None:
    """The UserError (or NotRetried) inside Ray's wrappers, if any: Ray Train wraps a worker's exception
    in UserExceptionWithTraceback, a controller failure in ControllerError, and either may chain it.
    A storage error no retry can cure (a full disk, no permission, a read-only mount: a restarted run
    meets it again at its next checkpoint) counts as one, said in one line with what to do."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (UserError, NotRetried)):
            return error
        storage_error = storage_error_in(error)
        if storage_error is not None:
            return UserError(f"{storage_error_text(storage_error, RUN_FOLDER)}; the checkpoints "
                             "registered so far are kept: free space (or fix the permissions) and give the "
                             "same command again to continue from the last one")
        inner = [getattr(error, name, None) for name in ("_base_exc", "controller_failure", "cause")]
        error = next((e for e in inner if isinstance(e, BaseException)), None) or error.__cause__
    return None


def one_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
