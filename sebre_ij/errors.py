"""The exceptions the command line turns into one line: a user's mistake (exit code 2), and a run
stopped when asked (exit code 128 + the signal, as a shell reports a signal's death)."""


class UserError(Exception):
    """Bad input or a bad request: the message names the file, the problem and the fix."""


class Stopped(Exception):
    """A run stopped when asked, after saving its progress: the same call resumes it."""

    def __init__(self, done: int, total: int):
        super().__init__(f"interrupted at {done} of {total} tiles; run the same command to resume")
        self.done, self.total = done, total
