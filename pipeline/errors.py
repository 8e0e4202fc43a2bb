"""The error type for problems a user can fix (bad input, bad flag, bad config), and the storage errors
no retry can cure."""

import errno
import os


class UserError(Exception):
    """Printed by the CLI as one line (no traceback) with a non-zero exit status.

    The message names the file, flag or value at fault and, where it helps, what to do.
    """


# OSErrors that no retry can cure: the same write meets the same full disk, missing permission or
# read-only mount, so a retried task or a restarted run only repeats the error (and its traceback).
NOT_RETRIED_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


def storage_error_in(error: BaseException | None) -> OSError | None:
    """The OSError no retry can cure in `error` or the exceptions it was raised from, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NOT_RETRIED_ERRNOS:
            return error
        if isinstance(error, OSError) and error.errno is None:  # pyarrow's: the errno is only in the text
            code = next((c for c in sorted(NOT_RETRIED_ERRNOS) if os.strerror(c) in str(error)), None)
            if code is not None:
                return OSError(code, os.strerror(code))
        error = error.__cause__ or error.__context__
    return None


def storage_error_text(error: OSError, where: str) -> str:
    """One line naming the location and the cause, e.g. 'no space left on device: /data/out'."""
    cause = os.strerror(error.errno).lower() if error.errno else str(error).lower()
    return f"{cause}: {error.filename or where}"
