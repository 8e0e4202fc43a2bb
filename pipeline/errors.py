"""The error type for problems a user can fix (bad input, bad flag, bad config)."""


class UserError(Exception):
    """Printed by the CLI as one line (no traceback) with a non-zero exit status.

    The message names the file, flag or value at fault and, where it helps, what to do.
    """
