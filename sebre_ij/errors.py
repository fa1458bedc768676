"""The one exception type that the command line turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input or a bad request: the message names the file, the problem and the fix."""
