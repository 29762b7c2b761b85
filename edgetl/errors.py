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
    """Ctrl-C or SIGTERM during training: the last finished epoch is checkpointed. Exit code
    130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str):
        from edgetl import signals

        super().__init__(message, exit_code=signals.exit_code())


class TrainingDiverged(EdgetlError):
    """The loss became NaN or infinite."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=1)


class OptionError(EdgetlError):
    """A bad option value, said in the vocabulary of wherever it came from.

    ``field`` is the dataclass field ('epochs_head'); the command line shows it as
    ``--epochs-head -1: must be >= 1``, a pipeline file as
    ``pipeline.yaml: train.epochs_head = -1: must be >= 1``."""

    def __init__(self, field: str, value: object, problem: str, flag: str | None = None):
        self.field, self.value, self.problem = field, value, problem
        self.flag = flag or "--" + field.replace("_", "-")
        super().__init__(f"{self.flag} {value}: {problem}")

    def in_file(self, where: str, section: str | None = None) -> str:
        key = f"{section}.{self.field}" if section else self.field
        return f"{where}: {key} = {self.value!r}: {self.problem}"
