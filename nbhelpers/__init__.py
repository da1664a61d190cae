"""nbhelpers: interpret text-to-image diffusion models in notebooks.

Start with ``load_model("toy")`` (the bundled offline model) and see README.md.
"""
from .errors import (DeviceUnavailableError, EmptyPromptError, ImageFormatError, ModelNotFoundError, NbhelpersError,
                     NonFiniteError, PromptError, PromptTooLongError, UnsupportedModelError, WordNotInPromptError)
from .model import WORLD_MODELS, Denoiser, DiffusionModel, Generation, TrajectoryStep, load_model, resolve_device
from .text import TokenizedPrompt, UnknownWordWarning, Word, remove_word, tokenize
from . import attention, metrics  # noqa: E402  (submodules used as nbh.attention, nbh.metrics)
from . import bias, concept_attention, conceptor, timesteps  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "load_model", "WORLD_MODELS", "DiffusionModel", "Denoiser", "Generation", "TrajectoryStep", "resolve_device",
    "tokenize", "remove_word", "TokenizedPrompt", "Word", "UnknownWordWarning",
    "NbhelpersError", "ModelNotFoundError", "UnsupportedModelError", "DeviceUnavailableError", "PromptError",
    "PromptTooLongError", "EmptyPromptError", "WordNotInPromptError", "ImageFormatError", "NonFiniteError",
]
