"""``DiffusionModel``: one adapter over a diffusers text-to-image pipeline of any supported family.

The estimators only need the small :class:`Denoiser` protocol; this class satisfies it for every
family in :mod:`nbhelpers.families` (Stable Diffusion 1.x/2.x ε and v, SDXL, SD3/3.5, Flux dev and
schnell, PixArt-Σ/α): the family supplies the text encoding, the null condition, the conversion of
the network's output to ε at a continuous log-SNR, the latent layout and the attention hook points.

Conventions (the README's "The `Denoiser` protocol" states them for users):

- log-SNR ``α`` (``logsnr``): the channel is ``z = sqrt(σ(α))·x + sqrt(σ(-α))·ε`` with ``x`` the
  *scaled* VAE latent, so ``σ(α) = ᾱ_t`` of the DDPM schedule.
- ``eps(z, logsnr, cond)`` returns the epsilon prediction at any real ``α``: a DDPM network gets the
  float timestep found by interpolating the scheduler's own table ``log(ᾱ_t / (1 - ᾱ_t))``; a
  rectified-flow network gets ``t = σ(−α/2)`` and ``s·z`` (see :mod:`nbhelpers.families.noise`).
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .errors import (DeviceUnavailableError, EmptyPromptError, ImageFormatError, ModelNotFoundError,
                     NonFiniteError, UnsupportedModelError)
from .text import TokenizedPrompt, check_prompt, remove_word, tokenize, warn_unknown_words
from .validate import ArgumentError, seeds as seed_list, validated

PACKAGE_ROOT = Path(__file__).resolve().parent
TOY_MODEL_DIR = Path(os.environ.get("NBHELPERS_TOY_MODEL", PACKAGE_ROOT.parent / "data" / "models" / "toy"))
TOY_DIT_MODEL_DIR = Path(os.environ.get("NBHELPERS_TOY_DIT_MODEL", PACKAGE_ROOT.parent / "data" / "models" / "toy-dit"))
# The bundled models of the toy world: one world, two architectures (SD's UNet with DDPM noise; SD3's
# MMDiT with rectified flow), one VAE and latent space; every lesson's toy-world checks apply to both.
WORLD_MODELS = {"toy": TOY_MODEL_DIR, "toy-dit": TOY_DIT_MODEL_DIR}
ALIASES = {
    "toy": str(TOY_MODEL_DIR),
    "toy-dit": str(TOY_DIT_MODEL_DIR),
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1-base",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd3-medium": "stabilityai/stable-diffusion-3-medium-diffusers",
    "sd35-medium": "stabilityai/stable-diffusion-3.5-medium",
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
    "flux-dev": "black-forest-labs/FLUX.1-dev",
    "pixart-sigma": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
}
ORACLE = "toy-oracle"  # the toy world's exact denoiser (nbhelpers.toyworld.oracle), not a pipeline


@runtime_checkable
class Denoiser(Protocol):
    """What every estimator needs from a model.

    - ``latent_shape``: ``(C, H, W)`` of one sample ``z``;
    - ``eps(z, logsnr, cond)``: the MMSE estimate of the noise ``ε`` in ``z = sqrt(σ(α)) x +
      sqrt(σ(-α)) ε``, for ``z`` of shape ``(B, C, H, W)``, ``logsnr`` a float or a ``(B,)`` tensor
      and ``cond`` a condition of batch ``B`` or 1 (what the model's ``condition(...)`` returns;
      ``None`` for the unconditional denoiser). Returns a float32 tensor shaped like ``z``.

    ``DiffusionModel`` implements it; so do the closed-form denoisers used in the science tests.
    """

    latent_shape: tuple[int, ...]

    def eps(self, z: torch.Tensor, logsnr, cond: Any) -> torch.Tensor: ...


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks CUDA, then Apple's MPS, then the CPU; an explicit device must exist."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceUnavailableError(f"device={device!r} is not a device name; use 'auto' (the best available), 'cpu', "
                                     "'cuda', 'cuda:0' or 'mps'") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceUnavailableError(f"device={str(device)!r} is not supported; use 'auto', 'cpu', 'cuda' or 'mps'")
    if dev.type == "cuda" and dev.index is not None and torch.cuda.is_available() \
            and dev.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(f"device={str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                                     f"device(s), numbered 0..{torch.cuda.device_count() - 1}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device={str(device)!r} was asked for but CUDA is not available on this machine "
            "(torch.cuda.is_available() is False); use device='auto' or device='cpu'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceUnavailableError(f"device={str(device)!r} was asked for but MPS is not available; use 'auto' or 'cpu'")
    return dev


FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype) -> torch.dtype | None:
    """None (the device's default), a floating torch dtype, or its name ("float32", "float16", "bfloat16";
    "torch.float16", "fp16", "half" and "bf16" also)."""
    if dtype is None or dtype in FLOAT_DTYPES.values():
        return dtype
    if isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
        name = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16",
                "bf16": "bfloat16"}.get(name, name)
        if name in FLOAT_DTYPES:
            return FLOAT_DTYPES[name]
    raise ArgumentError(f"dtype={dtype!r} is not a floating-point type a pipeline can run in; use one of "
                        f"{', '.join(FLOAT_DTYPES)} (e.g. dtype='float32', or torch.float16 on a GPU)")


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' warnings while diffusers imports and loads a pipeline (it warns about
    an image processor that these pipelines never use: ``feature_extractor=None``)."""
    from transformers.utils import logging as tlog

    old = tlog.get_verbosity()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(old)


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _resolve_source(name_or_path: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local folder)."""
    src = ALIASES.get(name_or_path, name_or_path)
    p = Path(src).expanduser()
    if p.is_dir():
        if not (p / "model_index.json").exists():
            raise ModelNotFoundError(f"{str(p)!r} is a folder but not a diffusers pipeline (no model_index.json); "
                                     "point at the folder that save_pretrained wrote")
        return str(p), True
    if name_or_path in WORLD_MODELS:
        arch = " --arch dit" if name_or_path == "toy-dit" else ""
        raise ModelNotFoundError(f"the bundled model {name_or_path!r} is missing at {src}; restore "
                                 f"data/models/{name_or_path} from git or retrain it with "
                                 f"`python -m nbhelpers.toyworld.train{arch}`")
    if src.startswith((".", "/", "~")) or src.count("/") != 1:  # not of the form org/name
        raise ModelNotFoundError(f"no model folder at {src!r}; give a folder written by save_pretrained, a Hugging Face "
                                 f"id such as 'stabilityai/stable-diffusion-2-1-base', or one of {sorted(ALIASES)}")
    return src, False


def _cached_snapshot(repo_id: str) -> Path | None:
    """The folder of ``repo_id`` in the local Hugging Face cache, or None (nothing is downloaded)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached (or an id the hub library refuses): from_pretrained reports it
        return None


def _pipeline_class_name(folder: Path | None) -> str | None:
    if folder is None:
        return None
    try:
        return json.loads((Path(folder) / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        return None


def load_model(name_or_path: str = "toy", device: str = "auto", dtype: torch.dtype | str | None = None,
               image_size: int | None = None, cpu_offload: bool = False, **pipeline_kwargs) -> "DiffusionModel":
    """Load a text-to-image pipeline of a supported family with ``from_pretrained`` and wrap it.

    ``name_or_path``: "toy" or "toy-dit" (the bundled models of the toy world: SD's layout with a UNet, SD3's
    with an MMDiT and rectified flow), a zoo entry (``sd15``, ``sd21``, ``sdxl``, ``sd3-medium``,
    ``sd35-medium``, ``flux-schnell``, ``flux-dev``, ``pixart-sigma``: from the local Hugging Face cache
    when offline), a Hugging Face id or a local folder. ``dtype``: default float32 on CPU, float16 on CUDA
    (bfloat16 for Flux and SD3.5, whose activations overflow float16). ``image_size``: the pixel size the
    methods work at (default: the model's own). ``cpu_offload``: diffusers' model CPU offload, for GPUs
    too small to hold every component at once.

    "toy-oracle" is not a pipeline: it is the toy world's exact denoiser in the toy model's latent space
    (:class:`nbhelpers.toyworld.oracle.WorldDenoiser`, float32; extra keyword arguments go to it), with
    the same prompt interface, so every information estimate on a world picture has an exact answer.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ModelNotFoundError(f"name_or_path={name_or_path!r} is not a model name or a folder; give 'toy', a folder "
                                 f"written by save_pretrained, a Hugging Face id, or one of {sorted(ALIASES)}")
    name_or_path = os.fspath(name_or_path)
    if name_or_path == ORACLE:
        from .toyworld.oracle import WorldDenoiser

        return WorldDenoiser.build(device=device, **pipeline_kwargs)
    with quiet_transformers():
        import diffusers

    from .families import family_class, supported_pipelines
    from .model_folder import check_model_folder

    dev = resolve_device(device)
    dtype = resolve_dtype(dtype)
    src, local = _resolve_source(name_or_path)
    folder = Path(src) if local else _cached_snapshot(src)  # a hub id: its cached copy, if there is one
    if folder is None and _hf_offline():  # (online, from_pretrained downloads it below)
        raise ModelNotFoundError(
            f"the model {name_or_path!r} ({src}) is not in the local Hugging Face cache and offline mode is on "
            f"(HF_HUB_OFFLINE=1). Download it where there is a network (`hf download {src}`), or pass the path of "
            "a local copy")
    if folder is not None:
        check_model_folder(folder)
    class_name = _pipeline_class_name(folder)
    family = family_class(class_name) if class_name else None
    if class_name and family is None:
        raise UnsupportedModelError(f"{name_or_path!r} is a {class_name}; the supported pipelines are "
                                    f"{', '.join(supported_pipelines())}")
    if dtype is None:
        dtype = torch.float32 if dev.type != "cuda" else (
            torch.bfloat16 if (family is not None and family.name == "flux") or "3.5" in src else torch.float16)
    kwargs = dict(dtype=dtype, use_safetensors=True)
    if family is None or family.name == "sd":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    kwargs.update(pipeline_kwargs)
    pipeline_cls = getattr(diffusers, class_name) if class_name else diffusers.DiffusionPipeline
    try:
        with quiet_transformers():
            pipe = pipeline_cls.from_pretrained(src, local_files_only=local or _hf_offline(), **kwargs)
    except (OSError, EnvironmentError, ValueError) as e:
        if local:
            raise
        mode = "offline mode is on (HF_HUB_OFFLINE=1)" if _hf_offline() else "it could not be downloaded"
        raise ModelNotFoundError(
            f"the model {name_or_path!r} ({src}) is not in the local Hugging Face cache and {mode}. Download it "
            f"where there is a network (`hf download {src}`), or pass the path of a local copy") from e
    pipe.set_progress_bar_config(disable=True)
    if cpu_offload:
        if dev.type != "cuda":
            raise ArgumentError("cpu_offload=True needs a CUDA device (it moves components to the GPU when used)")
        pipe.enable_model_cpu_offload()
    else:
        pipe = pipe.to(dev)
    return DiffusionModel(pipe, name=name_or_path, device=dev, dtype=dtype, image_size=image_size)


@dataclass
class TrajectoryStep:
    """One denoising step: timestep, log-SNR, the latent it started from, the (guided) noise
    estimate and the predicted clean latent, all scaled latents of shape (B, C, h, w) on the CPU."""

    index: int
    timestep: float
    logsnr: float
    latent: torch.Tensor
    eps: torch.Tensor
    pred_x0: torch.Tensor


@dataclass
class Generation:
    """Images (uint8, (B, H, W, 3)), final latents, prompts, seeds, and the trajectory if asked for.
    ``decode_step(i)`` decodes step i's predicted clean images lazily."""

    images: np.ndarray
    latents: torch.Tensor
    prompts: list[str]
    seeds: list[int]
    params: dict
    trajectory: list[TrajectoryStep] = field(default_factory=list)
    _model: Any = field(default=None, repr=False)

    def decode_step(self, i: int, which: str = "pred_x0") -> np.ndarray:
        """uint8 images of step ``i``: ``which`` = "pred_x0" (predicted clean image) or "latent" (x_t)."""
        return self._model.decode(getattr(self.trajectory[i], which))


class DiffusionModel:
    """Adapter over a text-to-image pipeline of a supported family; satisfies :class:`Denoiser`.

    ``family`` (:class:`nbhelpers.families.Family`) holds what differs between architectures;
    ``denoiser`` is the network (the UNet or the transformer)."""

    def __init__(self, pipe, name: str = "", device: torch.device | None = None, dtype: torch.dtype | None = None,
                 image_size: int | None = None):
        from .families import family_class, supported_pipelines

        fam = next((family_class(k.__name__) for k in type(pipe).__mro__ if family_class(k.__name__)), None)
        if fam is None:
            raise UnsupportedModelError(f"{type(pipe).__name__} is not a supported pipeline; the supported ones are "
                                        f"{', '.join(supported_pipelines())}")
        sched = pipe.scheduler
        if fam.name not in ("sd3", "flux") and not hasattr(sched, "alphas_cumprod"):
            raise UnsupportedModelError(f"the scheduler {type(sched).__name__} has no alphas_cumprod table; "
                                        "use a DDPM-family scheduler (DDIM, DDPM, PNDM, DPM-Solver, Euler)")
        try:
            self.family = fam(pipe, image_size=image_size)
        except ValueError as e:
            raise ArgumentError(str(e)) from None
        self.pipe = pipe
        pipe.set_progress_bar_config(disable=True)
        for part in pipe.components.values():  # inference: no dropout (a freshly built T5 has 10 %)
            if isinstance(part, torch.nn.Module):
                part.eval()
        self.name = name
        self.device = device or pipe.device
        self.dtype = dtype or self.denoiser.dtype
        self.prediction_type = self.family.noise.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "flow"):
            raise UnsupportedModelError(f"prediction_type {self.prediction_type!r} is not supported; "
                                        "epsilon and v_prediction are (and velocity, for rectified-flow families)")
        self.vae_scale = self.family.vae_scale
        self.image_size = self.family.image_size
        self.latent_shape = self.family.latent_shape
        self.scaling_factor = float(pipe.vae.config.scaling_factor)
        self.max_tokens = self.family.encoders()[0].max_length
        self._null = None

    def __repr__(self) -> str:
        return (f"DiffusionModel({self.name!r}, {self.family.name}, device={self.device}, dtype={self.dtype}, "
                f"image {self.image_size}px, latent {self.latent_shape}, {self.prediction_type})")

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network that predicts the noise (``pipe.unet`` or ``pipe.transformer``)."""
        return self.family.denoiser

    # -- noise levels ---------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The tokenizer whose words the methods index (the family's first encoder)."""
        return self.family.tokenizer

    @property
    def logsnr_range(self) -> tuple[float, float]:
        """(lowest, highest) log-SNR the model was trained on (nats)."""
        return self.family.noise.logsnr_range

    def logsnr_of(self, timestep) -> torch.Tensor:
        """log-SNR of (possibly fractional) scheduler timesteps (DDPM: by interpolation in the table;
        flow: ``2·log((1−t)/t)`` with ``t = timestep / 1000``)."""
        return self.family.noise.logsnr_of(timestep)

    def timestep_of(self, logsnr) -> torch.Tensor:
        """Fractional scheduler timestep with the given log-SNR (clamped to the trained range)."""
        return self.family.noise.timestep_of(logsnr)

    # -- text ------------------------------------------------------------------------------------
    def tokenize(self, prompt: str) -> TokenizedPrompt:
        """Tokens and word spans of ``prompt`` (raises if it is too long). Words the tokenizer does not know
        (see :func:`nbhelpers.text.unknown_words`) give an :class:`~nbhelpers.text.UnknownWordWarning`."""
        tp = self.family.tokenize(prompt)
        warn_unknown_words(self.tokenizer, tp)
        return tp

    def word_positions(self, prompt: str, word: str, occurrence: int | None = None) -> list[int]:
        """Columns of ``word`` in the denoiser's text sequence (its sub-word tokens in every encoder the
        denoiser attends to: SD3's CLIP and T5 tokens, Flux's and PixArt's T5 tokens)."""
        self.tokenize(prompt)
        return self.family.word_positions(prompt, word, occurrence)

    def remove_word(self, prompt: str, word: str, policy: str = "delete", replacement: str = "_",
                    occurrence: int | None = None) -> str:
        """``prompt`` without ``word`` by ``policy`` ("delete" or "replace"); see ``nbhelpers.text``."""
        return remove_word(prompt, word, policy, replacement, occurrence, tokenizer=self.tokenizer)

    @torch.no_grad()
    def encode_text(self, prompts: str | list[str]):
        """The denoiser's condition for prompts, batch len(prompts): for SD 1.x/2.x the text encoder's
        hidden states (B, L, D); for the other families a :class:`~nbhelpers.families.Condition` (hidden
        states plus pooled embeddings, masks, time ids) that behaves like that tensor. Raises
        :class:`PromptTooLongError` instead of truncating silently."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        for p in prompts:
            self.tokenize(p)  # validates type and length
        return self.family.encode(prompts, self.device, self.dtype)

    def condition(self, prompts: str | list[str] | None):
        """The ``cond`` that :meth:`eps` takes: ``None`` gives the unconditional (null) one."""
        if prompts is None:
            return self.null_condition()
        return self.encode_text(prompts)

    @torch.no_grad()
    def null_condition(self):
        """The null (unconditional) condition, batch 1, cached: the empty prompt's encoding for most
        families, zeros for SDXL (as its pipeline does; ``model.family.null_condition_doc`` says which)."""
        if self._null is None:
            self._null = self.family.null(self.device, self.dtype)
        return self._null

    # -- the denoiser ------------------------------------------------------------------------------
    def eps(self, z: torch.Tensor, logsnr, cond: torch.Tensor | None = None, max_batch: int | None = None,
            grad: bool = False) -> torch.Tensor:
        """Epsilon prediction (float32, shaped like ``z``) at log-SNR ``logsnr`` (float or (B,)).

        ``cond``: a condition of batch B or 1 (from :meth:`condition`), None for unconditional.
        ``max_batch`` splits large batches into several denoiser calls. ``grad=True`` keeps the autograd
        graph (gradients to ``z``, ``cond`` or the weights, e.g. for saliency or learning a token)."""
        with torch.set_grad_enabled(grad):
            return self._eps(z, logsnr, cond, max_batch)

    def _eps(self, z, logsnr, cond, max_batch):
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ImageFormatError(f"z must have shape (B, {', '.join(map(str, self.latent_shape))}), got {tuple(z.shape)}")
        b = z.shape[0]
        a = torch.as_tensor(logsnr, dtype=torch.float64).reshape(-1)
        if a.numel() == 1:
            a = a.expand(b)
        if a.numel() != b:
            raise ArgumentError(f"logsnr has {a.numel()} values for a batch of {b}")
        cond = self.null_condition() if cond is None else cond
        if cond.shape[0] == 1 and b > 1:
            cond = cond.expand(b, *cond.shape[1:])
        if cond.shape[0] != b:
            raise ArgumentError(f"cond has batch {cond.shape[0]} but z has batch {b}; give one condition or one per sample")
        outs = []
        step = max_batch or b
        for i in range(0, b, step):
            zi = z[i : i + step].to(self.device, self.dtype)
            ci = cond[i : i + step].to(self.device, self.dtype)
            with self._autocast():
                outs.append(self.family.eps(zi, a[i : i + step], ci).float())
        eps = torch.cat(outs)
        if not torch.isfinite(eps).all():
            raise NonFiniteError(
                f"the denoiser returned NaN/inf in {self.dtype} (log-SNR {float(a.min()):.2f}..{float(a.max()):.2f}); "
                "reload with dtype=torch.float32 or torch.bfloat16")
        return eps.to(z.device)

    def to_eps(self, output: torch.Tensor, z_net: torch.Tensor, logsnr) -> torch.Tensor:
        """The network's output at its own input ``z_net`` (B, C, h, w) and log-SNR ``logsnr`` (float or
        (B,)) as an ε prediction: ε itself; for v-prediction ``sqrt(σ(α))·v + sqrt(σ(−α))·z``; for a
        rectified-flow velocity ``z_t + (1−t)·v``. The one conversion every method uses (generation
        trajectories included); see :mod:`nbhelpers.families.noise`."""
        return self.family.noise.to_eps(output, z_net, logsnr)

    def network_latents(self, z: torch.Tensor, logsnr) -> torch.Tensor:
        """The VP latents ``z`` (B, C, h, w) at log-SNR ``logsnr`` as the family's network and scheduler
        see them: themselves for DDPM families, ``s·z`` (the flow latent ``(1−t)x + tε``) for flow ones."""
        return z * self.family.noise.scale(logsnr).reshape(-1, 1, 1, 1).to(z.device, z.dtype)

    def vp_latents(self, z_net: torch.Tensor, logsnr) -> torch.Tensor:
        """Inverse of :meth:`network_latents`."""
        return z_net / self.family.noise.scale(logsnr).reshape(-1, 1, 1, 1).to(z_net.device, z_net.dtype)

    def _autocast(self):
        if self.device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16):
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def pred_x0(self, z: torch.Tensor, logsnr, eps: torch.Tensor) -> torch.Tensor:
        """Predicted clean latent from ``z`` and its noise estimate: (z - sqrt(σ(-α)) ε) / sqrt(σ(α))."""
        a = torch.as_tensor(logsnr, dtype=torch.float32, device=z.device).reshape(-1, 1, 1, 1)
        return (z - torch.sigmoid(-a).sqrt() * eps) / torch.sigmoid(a).sqrt()

    # -- images --------------------------------------------------------------------------------------
    def _image_tensor(self, image) -> torch.Tensor:
        """(B, 3, H, W) float in [-1, 1] from a PIL image, an array or tensor, or a list of them.

        Accepted, and nothing else (never misread):
        - PIL images in mode RGB;
        - numpy arrays (H, W, 3) or (B, H, W, 3): uint8 0..255, or float 0..1;
        - tensors (3, H, W) or (B, 3, H, W): uint8 0..255 (converted as arrays are), or float in [-1, 1]
          (diffusers' convention). A float tensor outside [-1, 1] (e.g. 0..255) is refused with the fix.
        """
        from PIL import Image

        if isinstance(image, (list, tuple)):
            if not image:
                raise ImageFormatError("no images given (an empty list); give one image or a list of them")
            return torch.cat([self._image_tensor(im) for im in image])
        if isinstance(image, Image.Image):
            if image.mode != "RGB":
                raise ImageFormatError(f"the image has mode {image.mode!r}; convert it with image.convert('RGB')")
            image = np.asarray(image)
        if isinstance(image, np.ndarray):
            arr = image
            if arr.ndim == 3:
                arr = arr[None]
            if arr.ndim != 4 or arr.shape[-1] != 3:
                hint = (" (channels first: use array.transpose(1, 2, 0))" if arr.ndim == 4 and arr.shape[1] == 3
                        else "; convert grey or RGBA images to RGB first")
                raise ImageFormatError(f"expected an RGB array (H, W, 3) or (B, H, W, 3), got shape {image.shape}{hint}")
            if arr.shape[0] == 0:
                raise ImageFormatError(f"no images given (an array of shape {image.shape})")
            if arr.dtype == np.uint8:
                x = torch.from_numpy(arr.astype(np.float32) / 127.5 - 1)
            elif arr.dtype.kind == "f" and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1:
                x = torch.from_numpy(arr.astype(np.float32) * 2 - 1)
            else:
                lo, hi = (arr.min(), arr.max()) if arr.dtype.kind in "fiub" else ("?", "?")
                raise ImageFormatError(f"a {arr.dtype} image array must be uint8 (0..255) or float in 0..1; got values "
                                       f"{lo}..{hi}. For 0..255 floats use array.astype('uint8'); for [-1, 1] floats "
                                       "use (array + 1) / 2")
            x = x.permute(0, 3, 1, 2)
        elif isinstance(image, torch.Tensor):
            x = image if image.ndim == 4 else image[None]
            if x.ndim != 4 or x.shape[1] != 3:
                hint = " (channels last: use tensor.permute(0, 3, 1, 2))" if x.ndim == 4 and x.shape[-1] == 3 else ""
                raise ImageFormatError(f"a tensor image must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}{hint}")
            if x.shape[0] == 0:
                raise ImageFormatError(f"no images given (a tensor of shape {tuple(image.shape)})")
            if x.dtype == torch.uint8:  # documented conversion, as for uint8 arrays
                x = x.float() / 127.5 - 1
            elif not x.is_floating_point():
                raise ImageFormatError(f"a {x.dtype} image tensor is ambiguous; give uint8 0..255 or float in [-1, 1]")
            else:
                x = x.detach().float()
                lo, hi = float(x.min()), float(x.max())
                if not (np.isfinite(lo) and np.isfinite(hi)):
                    raise ImageFormatError("the image tensor holds NaN or infinite values")
                if lo < -1.001 or hi > 1.001:
                    raise ImageFormatError(
                        f"a float image tensor must be in [-1, 1] (diffusers' convention); got values {lo:g}..{hi:g}. "
                        "For 0..255 use tensor / 127.5 - 1 (or pass it as uint8); for 0..1 use tensor * 2 - 1")
                x = x.clamp(-1, 1)
        else:
            raise ImageFormatError(f"cannot read an image from {type(image).__name__}; give a PIL image, a numpy "
                                   "array (H, W, 3) or a tensor (B, 3, H, W)" +
                                   (" (open a file with PIL.Image.open(path).convert('RGB'))"
                                    if isinstance(image, (str, os.PathLike)) else ""))
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ImageFormatError(
                f"the image is {x.shape[-1]}x{x.shape[-2]} pixels but this model works at {self.image_size}x"
                f"{self.image_size}; resize it first, e.g. image.resize(({self.image_size}, {self.image_size}))")
        return x

    @torch.no_grad()
    def encode_image(self, image) -> torch.Tensor:
        """Scaled VAE latents (posterior mean × scaling factor), float32 (B, C, h, w)."""
        return self.family.encode_latents(self._image_tensor(image).to(self.device))

    def latent_of(self, image) -> torch.Tensor:
        """(B, C, h, w) scaled latents of images (anything :meth:`encode_image` takes), or the latents
        themselves when given a tensor of the latent's shape ((C, h, w) or (B, C, h, w)): the one way
        every method turns its ``image`` argument into ``x``."""
        if isinstance(image, torch.Tensor) and tuple(image.shape[-3:]) == tuple(self.latent_shape):
            return image.reshape(-1, *self.latent_shape).float()
        return self.encode_image(image)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """uint8 images (B, H, W, 3) from scaled latents."""
        x = self.family.decode_latents(latents.to(self.device))
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()

    # -- generation ----------------------------------------------------------------------------------
    def initial_noise(self, seeds: list[int]) -> torch.Tensor:
        """Standard normal starting latents, one per seed (CPU generators: same seed, same noise)."""
        return torch.stack([torch.randn(self.latent_shape, generator=torch.Generator("cpu").manual_seed(int(s)))
                            for s in seeds])

    @validated(skip=("prompt",), rules={"seed": seed_list})
    def generate(self, prompt: str | list[str] | None, seed: int | list[int] = 0, steps: int = 25,
                 guidance: float = 3.0, trajectory: bool = False, latents: torch.Tensor | None = None,
                 negative_prompt: str | list[str] | None = None, cond: torch.Tensor | None = None) -> Generation:
        """Generate with the pipeline's own ``__call__``.

        ``prompt``: a caption, a list of captions, or None for unconditional samples. ``seed``: one
        per prompt or a single one (seeds ``seed, seed+1, ...``). ``trajectory=True`` records every
        step's latent, noise estimate and predicted clean latent (via ``callback_on_step_end`` and
        the scheduler's step). ``cond``: a condition from :meth:`condition` (batch 1 or one per seed) to generate from
        instead of a prompt (e.g. a learned pseudo-token), with the null condition as the negative.
        Returns a :class:`Generation`."""
        if latents is not None and (not isinstance(latents, torch.Tensor) or latents.ndim != 4
                                    or tuple(latents.shape[1:]) != self.latent_shape):
            raise ImageFormatError(f"latents must be a tensor (B, {', '.join(map(str, self.latent_shape))}), got "
                                   f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
        if cond is not None:
            seeds = list(seed) if isinstance(seed, (list, tuple)) else [int(seed)]
            if cond.shape[0] not in (1, len(seeds)):
                raise ArgumentError(f"cond has batch {cond.shape[0]}; give 1 or one per seed ({len(seeds)})")
            c = cond.detach().expand(len(seeds), *cond.shape[1:]) if cond.shape[0] == 1 else cond.detach()
            null = self.null_condition().expand(len(seeds), *cond.shape[1:])
            embeds = self.family.pipeline_text_args(c.to(self.device, self.dtype), null.to(self.device, self.dtype))
            return self._run_pipe(["<cond>"] * len(seeds), seeds, steps, guidance, trajectory, latents, embeds)
        if prompt is None:
            prompts = [""]
        else:
            prompts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]
            if not prompts:
                raise EmptyPromptError("prompt=[] is an empty list; give a caption, a list of captions, or None for "
                                       "unconditional samples")
            for p in prompts:
                check_prompt(p)
                if not p.strip():
                    raise EmptyPromptError("the prompt is empty; pass prompt=None for unconditional samples, or a "
                                           "caption such as 'a red circle on the left'")
                self.tokenize(p)
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [int(seed) + i for i in range(len(prompts))]
        if len(seeds) != len(prompts):
            if len(prompts) == 1:
                prompts = prompts * len(seeds)
            else:
                raise ArgumentError(f"{len(seeds)} seeds for {len(prompts)} prompts; give one seed per prompt or one in all")
        return self._run_pipe(prompts, seeds, steps, guidance, trajectory, latents,
                              dict(prompt=prompts, **({} if negative_prompt is None else {"negative_prompt": negative_prompt})))

    @torch.no_grad()
    def _run_pipe(self, prompts, seeds, steps, guidance, trajectory, latents, text_args: dict) -> Generation:
        z = self.initial_noise(seeds) if latents is None else latents
        recorder = _TrajectoryRecorder(self, len(prompts), guidance) if trajectory else None
        with (recorder or contextlib.nullcontext()):
            out = self.pipe(**text_args, num_inference_steps=steps, guidance_scale=guidance,
                            latents=self.family.pipeline_latents(z.to(self.device, self.dtype)), output_type="latent",
                            height=self.image_size, width=self.image_size,
                            **(self.family.step_callback_args(recorder.on_step_end) if recorder else {}),
                            **self.family.pipeline_call_args())
        final = self.family.from_pipeline_latents(out.images).float()
        if not torch.isfinite(final).all():
            raise NonFiniteError(f"generation produced NaN/inf in {self.dtype}; reload with dtype=torch.float32 "
                                 "or torch.bfloat16")
        gen = Generation(self.decode(final), final.cpu(), prompts, seeds,
                         dict(steps=steps, guidance=guidance, scheduler=type(self.pipe.scheduler).__name__),
                         recorder.steps if recorder else [], self)
        return gen


class _TrajectoryRecorder:
    """Records each denoising step during ``pipe.__call__`` through the hook layer: a forward hook on
    the denoiser keeps each call's input latents, timestep and output, and the pipeline's
    ``callback_on_step_end`` combines them as the pipeline did (classifier-free guidance: a call with
    twice the prompts' rows holds the unconditional half first, combined as ``uncond +
    guidance·(cond − uncond)``; Flux's distilled guidance is inside the network). The family converts
    the network's view (packed, flow-scaled, velocity) to VP latents and ε. Nothing of the pipeline is
    replaced; the hook is removed on exit, also on error."""

    def __init__(self, model: DiffusionModel, n_prompts: int = 1, guidance: float | None = None):
        self.model = model
        self.n_prompts = n_prompts
        self.guidance = guidance
        self.steps: list[TrajectoryStep] = []
        self._pending = None
        self._hooks = None

    def __enter__(self):
        from .hooks import module_hooks

        def keep(module, args, kwargs, output):
            sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
            timestep = args[1] if len(args) > 1 else kwargs["timestep"]
            out = output[0] if isinstance(output, tuple) else output.sample
            self._pending = (timestep, sample.detach().float().cpu(), out.detach().float().cpu())

        self._hooks = module_hooks(self.model.denoiser, forward=keep, with_kwargs=True)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        return False

    def on_step_end(self, pipe, i, t, callback_kwargs):
        t_net, sample, out = self._pending
        m, fam = self.model, self.model.family
        sample, out = fam.net_input_latents(sample), fam.net_output_latents(out)
        if out.shape[0] == 2 * self.n_prompts and fam.guidance_is_cfg():  # the pipeline's own combination
            sample = sample.chunk(2)[1]
            uncond, cond = out.chunk(2)
            g = self.guidance if self.guidance is not None else pipe.guidance_scale
            out = uncond + g * (cond - uncond)
        a = fam.logsnr_of_net_timestep(t_net)
        eps = m.to_eps(out, sample, a)
        z = m.vp_latents(sample, a)
        self.steps.append(TrajectoryStep(i, float(torch.as_tensor(t).reshape(-1)[0]), a, z, eps, m.pred_x0(z, a, eps)))
        return callback_kwargs
