"""The two noise processes of today's text-to-image models, both seen as one variance-preserving channel.

Every estimator in nbhelpers works in the VP channel ``z = sqrt(σ(α))·x + sqrt(σ(−α))·ε`` at a real
log-SNR ``α`` (nats), ``x`` the scaled VAE latent. A family's network sees its own parametrisation:

- :class:`DiscreteVP` (DDPM: SD 1.x/2.x, SDXL, PixArt): the network's input *is* the VP ``z``; its
  timestep is the fractional training step whose log-SNR ``log(ᾱ_t/(1−ᾱ_t))`` (interpolated in the
  scheduler's own table) is ``α``; the output is ε, or ``v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x`` (v-prediction).
- :class:`FlowMatching` (rectified flow: SD3/3.5, Flux): ``z_t = (1−t)·x + t·ε`` with ``t ∈ (0, 1)``.
  Dividing by ``s = sqrt((1−t)² + t²)`` gives the VP channel with ``sqrt(σ(α)) = (1−t)/s`` and
  ``sqrt(σ(−α)) = t/s``, i.e. ``α = 2·log((1−t)/t)`` and ``t = σ(−α/2)``. The network predicts the
  velocity ``v = ε − x``; since ``z_t + (1−t)·v = (1−t)x + tε + (1−t)ε − (1−t)x = ε``, the noise
  estimate is ``ε̂ = z_t + (1−t)·v̂`` — exact, no approximation (``tests/test_families.py`` checks it
  on a Gaussian with its closed-form velocity).
"""
from __future__ import annotations

import torch


class DiscreteVP:
    """A DDPM schedule (``scheduler.alphas_cumprod``), ε or v prediction."""

    kind = "vp"

    def __init__(self, scheduler, prediction_type: str | None = None):
        acp = scheduler.alphas_cumprod.double()
        self.table = torch.log(acp / (1 - acp))  # log-SNR per training step, decreasing in t
        self.prediction_type = prediction_type or scheduler.config.get("prediction_type", "epsilon")
        self.num_train_timesteps = len(self.table)

    @property
    def logsnr_range(self) -> tuple[float, float]:
        return float(self.table[-1]), float(self.table[0])

    def logsnr_of(self, timestep) -> torch.Tensor:
        """log-SNR of (possibly fractional) training timesteps, by linear interpolation in the table."""
        t = torch.as_tensor(timestep, dtype=torch.float64)
        n = len(self.table)
        t = t.clamp(0, n - 1)
        lo = t.floor().long().clamp(max=n - 2)
        frac = t - lo
        return (1 - frac) * self.table[lo] + frac * self.table[lo + 1]

    def timestep_of(self, logsnr) -> torch.Tensor:
        """Fractional training timestep with log-SNR ``logsnr`` (clamped to the trained range)."""
        a = torch.as_tensor(logsnr, dtype=torch.float64)
        table = self.table.flip(0)  # increasing
        ts = torch.arange(len(table) - 1, -1, -1, dtype=torch.float64)
        a = a.clamp(float(table[0]), float(table[-1]))
        idx = torch.searchsorted(table, a.reshape(-1).contiguous()).clamp(1, len(table) - 1)
        x0, x1 = table[idx - 1], table[idx]
        w = (a.reshape(-1) - x0) / (x1 - x0)
        return (ts[idx - 1] + w * (ts[idx] - ts[idx - 1])).reshape(a.shape)

    def scale(self, logsnr) -> torch.Tensor:
        """Factor from the VP ``z`` to the network's input: 1."""
        return torch.ones_like(torch.as_tensor(logsnr, dtype=torch.float64))

    def to_eps(self, output: torch.Tensor, z_net: torch.Tensor, logsnr) -> torch.Tensor:
        """ε from the network's output at its input ``z_net`` (B, C, h, w) and log-SNR (float or (B,))."""
        if self.prediction_type != "v_prediction":
            return output
        ab = torch.sigmoid(torch.as_tensor(logsnr, dtype=torch.float64)).reshape(-1, 1, 1, 1).to(output.device, torch.float32)
        return ab.sqrt() * output + (1 - ab).sqrt() * z_net


class FlowMatching:
    """Rectified flow ``z_t = (1−t)·x + t·ε`` with a velocity-predicting network; ``t`` in scheduler
    units is ``t · num_train_timesteps`` (SD3's and Flux's schedulers: 1000)."""

    kind = "flow"
    prediction_type = "flow"

    def __init__(self, scheduler=None, t_min: float = 1e-3):
        self.num_train_timesteps = int(getattr(getattr(scheduler, "config", None), "num_train_timesteps", 1000) or 1000)
        self.t_min = t_min

    @staticmethod
    def t_of(logsnr) -> torch.Tensor:
        """Flow time ``t = σ(−α/2)`` of log-SNR ``α``."""
        return torch.sigmoid(-torch.as_tensor(logsnr, dtype=torch.float64) / 2)

    @staticmethod
    def logsnr_of_t(t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return 2 * (torch.log1p(-t) - torch.log(t))

    @property
    def logsnr_range(self) -> tuple[float, float]:
        """The log-SNR of ``t ∈ [t_min, 1 − t_min]`` (±13.8 nats for t_min = 1e-3)."""
        return float(self.logsnr_of_t(1 - self.t_min)), float(self.logsnr_of_t(self.t_min))

    def logsnr_of(self, timestep) -> torch.Tensor:
        """log-SNR of a scheduler timestep (``t · num_train_timesteps``), clamped to the range."""
        t = torch.as_tensor(timestep, dtype=torch.float64) / self.num_train_timesteps
        return self.logsnr_of_t(t.clamp(self.t_min, 1 - self.t_min))

    def timestep_of(self, logsnr) -> torch.Tensor:
        lo, hi = self.logsnr_range
        return self.t_of(torch.as_tensor(logsnr, dtype=torch.float64).clamp(lo, hi)) * self.num_train_timesteps

    def scale(self, logsnr) -> torch.Tensor:
        """``s = sqrt((1−t)² + t²)``: the flow latent is ``s · z`` for the VP ``z``."""
        t = self.t_of(logsnr)
        return torch.sqrt((1 - t) ** 2 + t ** 2)

    def to_eps(self, velocity: torch.Tensor, z_net: torch.Tensor, logsnr) -> torch.Tensor:
        """``ε̂ = z_t + (1−t)·v̂`` from the velocity at the flow latent ``z_net`` (B, C, h, w)."""
        t = self.t_of(logsnr).reshape(-1, 1, 1, 1).to(velocity.device, torch.float32)
        return z_net + (1 - t) * velocity
