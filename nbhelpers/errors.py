"""Errors raised at the API boundary. Each message names the bad value and says what to do.

Every class also derives from the built-in exception a caller would expect (``ValueError``,
``FileNotFoundError``, ...), so ``except ValueError`` keeps working.
"""


class NbhelpersError(Exception):
    """Base class of every error this package raises on purpose."""


class ModelNotFoundError(NbhelpersError, FileNotFoundError):
    """A model name or path that is neither a local folder nor in the local Hugging Face cache."""


class UnsupportedModelError(NbhelpersError, ValueError):
    """A pipeline this package cannot wrap (yet)."""


class DeviceUnavailableError(NbhelpersError, RuntimeError):
    """A device that this machine does not have (e.g. ``device="cuda"`` without CUDA)."""


class PromptError(NbhelpersError, ValueError):
    """A prompt that cannot be used as given (empty, too long, wrong type)."""


class PromptTooLongError(PromptError):
    """A prompt with more tokens than the text encoder accepts."""


class EmptyPromptError(PromptError):
    """An empty prompt where words are needed."""


class WordNotInPromptError(NbhelpersError, ValueError):
    """A word asked for that the prompt does not contain."""


class ImageFormatError(NbhelpersError, ValueError):
    """An image of the wrong size, mode or value range."""


class NonFiniteError(NbhelpersError, FloatingPointError):
    """NaN or infinity from the model (typically float16 overflow)."""
