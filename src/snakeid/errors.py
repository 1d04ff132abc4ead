"""The error library code raises for bad input the user can fix.

Stage scripts (`snakeid.stage.run_stage`) and the CLI turn it into one line, `error: <message>`,
and exit code 2, instead of a traceback.
"""


class UserError(Exception):
    """Bad input the user can fix; the message says how."""


class InvalidValue(UserError, ValueError):
    """A value the user gave is out of range or malformed: a flag, an argument, a field of a
    file. Also a ValueError, as Python's own checks of bad values are."""
