"""The one exception type that user-facing code raises for bad input."""


class ConvertSNNError(Exception):
    """A problem with what the user asked for: bad input, a missing file, an unsupported op.

    The message is one line that says what was wrong and what to do. The CLI prints it without a
    traceback and exits with a non-zero code.
    """


class InputRangeWarning(UserWarning):
    """Images outside [0, 1] reached a converted SNN (normalised inputs, or deliberate noise)."""
