"""Errors a user can fix. The CLI prints their message (no traceback) and exits with 2."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""


class DatasetError(UserError):
    """A dataset spec, path or file that cannot be read as asked."""
