"""User-facing errors: one line, naming the file and the fix, with an exit code."""


class EdgetlError(Exception):
    """A mistake the user can fix. The CLI prints ``error: <message>`` and exits.

    exit_code 2 is bad input (data, options, files); 1 is a failed operation.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class TrainingInterrupted(EdgetlError):
    """Ctrl-C during training: the last finished epoch is checkpointed."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=130)


class TrainingDiverged(EdgetlError):
    """The loss became NaN or infinite."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=1)
