"""User-facing errors: each carries one actionable line; the CLI prints it without a traceback."""


class SinderError(Exception):
    """Base class. ``str(err)`` is a single line that says what to do."""


class ConfigError(SinderError, ValueError):
    """A hyper-parameter or option is out of range."""


class ModelSpecError(SinderError):
    """The model spec is unknown or its weights cannot be found."""


class WeightsError(SinderError):
    """A checkpoint file is missing, unsafe, or does not fit the model."""


class ImageError(SinderError):
    """An image cannot be decoded or used; the message is the skip reason."""


class OutputExistsError(SinderError):
    """The output already exists and neither --overwrite nor --resume was given."""


class DiskFullError(SinderError, OSError):
    """The output device filled up; nothing partial is left behind."""


def require(condition: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``condition``: the one-line check of typed configs."""
    if not condition:
        raise ConfigError(message)


class Interrupted(SinderError):
    """SIGINT/SIGTERM arrived; the work stopped at a safe point (``exit_code``: 130 or 143)."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code
