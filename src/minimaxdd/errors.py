"""Errors a user can fix. The CLI prints their message (no traceback) and exits with 2.

Exit codes of `minimaxdd` (cli.main): 0 done; 2 a UserError (bad input, a run directory in use, a
diverged run, a full disk, a truncated file: the message names the problem and the fix); 130
interrupted (Ctrl-C); 143 terminated (SIGTERM), after the same clean-ups; 141 its output was a closed
pipe (`minimaxdd presets | head -1`), as for a process killed by SIGPIPE. Anything else is a bug and
shows its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""


class DatasetError(UserError):
    """A dataset spec, path or file that cannot be read as asked."""


class DivergedError(UserError):
    """Training produced a non-finite loss or weights; nothing non-finite was saved."""
