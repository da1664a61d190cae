"""Denoisers with exact answers, satisfying the ``Denoiser`` protocol (for science tests and lessons).

- :class:`GaussianDenoiser`: x ~ N(0, Σ) in d dimensions observed through y = B x + noise (noise
  covariance R). Its exact ε-MMSE is Σ_i σ(α + log λ_i) over the eigenvalues λ_i of the prior or
  posterior covariance, so ``I(x; y) = ½ log det Σ / det Σ_post`` and, on a truncated α range, the
  exact truncated value is known (:meth:`GaussianDenoiser.truncated_mi`).
- :class:`DiscreteDenoiser`: x takes K values (points in R^d); a condition *is* a log-probability
  vector over those points. The exact denoiser is a softmax-weighted average of the support, and the
  pointwise information is exactly ``log p(x|c_strong) - log p(x|c_weak)``.

Latents are shaped ``(B, d, 1, 1)`` so that the estimators treat them like images of one pixel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _softplus(x: float) -> float:
    return float(F.softplus(torch.tensor(x, dtype=torch.float64)))


class GaussianDenoiser:
    """Exact MMSE denoiser for jointly Gaussian (x, y), x ∈ R^d, y = B x + N(0, R).

    A condition is a tensor (b, 1 + k): column 0 is 1 when y (columns 1..k) is observed, 0 for the
    unconditional denoiser (the rest is then ignored)."""

    def __init__(self, prior_cov: torch.Tensor, B: torch.Tensor, noise_cov: torch.Tensor):
        self.S = prior_cov.double()
        self.B = B.double()
        self.R = noise_cov.double()
        self.d = self.S.shape[0]
        self.k = self.B.shape[0]
        Rinv = torch.linalg.inv(self.R)
        self.S_post = torch.linalg.inv(torch.linalg.inv(self.S) + self.B.T @ Rinv @ self.B)
        self.gain = self.S_post @ self.B.T @ Rinv  # E[x|y] = gain @ y
        self.latent_shape = (self.d, 1, 1)
        self._eig = {0: torch.linalg.eigh(self.S), 1: torch.linalg.eigh(self.S_post)}

    @classmethod
    def example(cls, d: int = 4, k: int = 2, seed: int = 0) -> "GaussianDenoiser":
        """The science tests' and benchmarks' case: a random d×d prior covariance (eigenvalues ≥ 0.3),
        k noisy observations y = Bx + N(0, ½ I), drawn with ``seed``."""
        g = torch.Generator().manual_seed(seed)
        A = torch.randn(d, d, generator=g, dtype=torch.float64)
        S = A @ A.T / d + 0.3 * torch.eye(d, dtype=torch.float64)
        B = torch.randn(k, d, generator=g, dtype=torch.float64)
        return cls(S, B, 0.5 * torch.eye(k, dtype=torch.float64))

    # exact values ------------------------------------------------------------------------------------
    def mi(self) -> float:
        """I(x; y) in nats: ½ log det Σ / det Σ_post."""
        return 0.5 * float(torch.logdet(self.S) - torch.logdet(self.S_post))

    def pointwise_mi(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Exact pointwise information ``log p(x | y) − log p(x)`` in nats of each latent x
        (n, d, 1, 1) with its condition (n, 1 + k) (0 where y is not observed)."""
        xf = x.reshape(x.shape[0], self.d).double()
        cond = cond.double().expand(xf.shape[0], -1)
        observed = cond[:, 0] > 0.5
        mean = cond[:, 1:] @ self.gain.T

        def logpdf(v, cov):
            L = torch.linalg.cholesky(cov)
            sol = torch.cholesky_solve(v.T, L).T
            return -0.5 * (v * sol).sum(1) - torch.log(torch.diagonal(L)).sum() - 0.5 * self.d * math.log(2 * math.pi)

        post = torch.where(observed, logpdf(xf - mean, self.S_post), logpdf(xf, self.S))
        return post - logpdf(xf, self.S)

    def truncated_mi(self, lo: float, hi: float) -> float:
        """½ ∫_lo^hi (mmse(α) - mmse(α|y)) dα exactly, with mmse(α) = Σ σ(α + log λ_i)."""
        def integral(eigvals):
            return sum(_softplus(hi + math.log(l)) - _softplus(lo + math.log(l)) for l in eigvals.tolist())

        return 0.5 * (integral(self._eig[0][0]) - integral(self._eig[1][0]))

    def mmse(self, alphas, observed: bool) -> torch.Tensor:
        """Exact ε-MMSE at each log-SNR: Σ_i σ(α + log λ_i) over the prior (observed=False) or
        posterior (observed=True) covariance's eigenvalues."""
        lam = self._eig[int(observed)][0]
        a = torch.as_tensor(alphas, dtype=torch.float64).reshape(-1, 1)
        return torch.sigmoid(a + torch.log(lam)[None]).sum(1)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws of (x as latents (n, d, 1, 1), condition (n, 1 + k) with y observed)."""
        L = torch.linalg.cholesky(self.S)
        x = torch.randn(n, self.d, generator=generator, dtype=torch.float64) @ L.T
        Lr = torch.linalg.cholesky(self.R)
        y = x @ self.B.T + torch.randn(n, self.k, generator=generator, dtype=torch.float64) @ Lr.T
        cond = torch.cat([torch.ones(n, 1, dtype=torch.float64), y], 1)
        return x.view(n, self.d, 1, 1).float(), cond

    def unconditional(self, n: int = 1) -> torch.Tensor:
        return torch.zeros(n, 1 + self.k, dtype=torch.float64)

    # the denoiser ------------------------------------------------------------------------------------
    def eps(self, z: torch.Tensor, logsnr, cond) -> torch.Tensor:
        b = z.shape[0]
        zf = z.reshape(b, self.d).double()
        a = torch.as_tensor(logsnr, dtype=torch.float64).reshape(-1).expand(b)
        if cond is None:
            cond = self.unconditional(b)
        cond = cond.double()
        observed = cond[:, 0] > 0.5
        mean = torch.where(observed[:, None], cond[:, 1:] @ self.gain.T, torch.zeros(b, self.d, dtype=torch.float64))
        sa, sb2 = torch.sigmoid(a).sqrt(), torch.sigmoid(-a)
        x_hat = torch.empty_like(zf)
        for flag in (0, 1):
            rows = observed == bool(flag)
            if not rows.any():
                continue
            lam, U = self._eig[flag]
            r = zf[rows] - sa[rows, None] * mean[rows]
            coef = (sa[rows, None] * lam[None]) / (sa[rows, None] ** 2 * lam[None] + sb2[rows, None])
            x_hat[rows] = mean[rows] + ((r @ U) * coef) @ U.T
        eps = (zf - sa[:, None] * x_hat) / sb2.sqrt()[:, None]
        return eps.float().view_as(z)


class DiscreteDenoiser:
    """Exact MMSE denoiser for x uniform-or-not over K support points in R^d.

    A condition is a tensor (b, K) of log-probabilities log p(x = point_k | condition).

    ``eps`` never forms a (b, K, d) tensor: the softmax's logits use ``sa·z·s_k - sa²||s_k||²/2``
    (``||z - sa·s_k||²`` without ``||z||²``, which is the same for every k), in chunks of rows so that a
    call holds about ``max_elements`` float64 numbers per (rows × K) matrix whatever the batch. Rows
    whose condition gives points probability 0 (log p = -inf) skip those points (exactly: their weight
    is 0). So a support of thousands of latents (the toy world's exact denoiser, ``load_model("toy-oracle")``)
    costs a matrix product. ``z`` is moved to the support's device
    and the result back to ``z``'s."""

    def __init__(self, support: torch.Tensor, max_elements: int = 1 << 22):
        self.support = support.double()  # (K, d)
        self.K, self.d = self.support.shape
        self.latent_shape = (self.d, 1, 1)
        self.max_elements = int(max_elements)
        self._half_sq = 0.5 * self.support.pow(2).sum(1)  # (K,)

    @staticmethod
    def log_probs(p) -> torch.Tensor:
        """(1, K) log-probabilities from probabilities (zeros allowed)."""
        p = torch.as_tensor(p, dtype=torch.float64).reshape(1, -1)
        return torch.log(p / p.sum())

    def latents(self, k) -> torch.Tensor:
        """Support point(s) k as latents (n, d, 1, 1)."""
        idx = torch.as_tensor(k).reshape(-1)
        return self.support[idx].float().view(-1, self.d, 1, 1)

    def eps(self, z: torch.Tensor, logsnr, cond) -> torch.Tensor:
        b = z.shape[0]
        dev = self.support.device
        zf = z.reshape(b, self.d).to(dev, torch.float64)
        a = torch.as_tensor(logsnr, dtype=torch.float64).reshape(-1).to(dev).expand(b)
        sa, sb2 = torch.sigmoid(a).sqrt(), torch.sigmoid(-a)
        logp = cond.to(dev, torch.float64)
        logp = logp.expand(b, self.K) if logp.shape[0] == 1 else logp
        x_hat = torch.empty_like(zf)
        possible = torch.isfinite(logp)
        if bool(possible.all()):
            groups = [(torch.arange(b, device=dev), None)]
        else:  # rows whose condition rules points out (log p = -inf, weight exactly 0) skip those points
            patterns, which = torch.unique(possible, dim=0, return_inverse=True)
            groups = [((which == g).nonzero().squeeze(1), patterns[g].nonzero().squeeze(1))
                      for g in range(len(patterns))]
        for rows_g, cols in groups:
            support = self.support if cols is None else self.support[cols]
            half_sq = self._half_sq if cols is None else self._half_sq[cols]
            step = max(1, self.max_elements // max(1, len(support)))
            for i in range(0, len(rows_g), step):
                r = rows_g[i : i + step]
                lp = logp[r] if cols is None else logp[r][:, cols]
                s_a = sa[r, None]
                # log p(k | z, c) = log p(k | c) - ||z - sa·s_k||² / (2 sb²) + const
                logits = lp + (s_a * (zf[r] @ support.T) - s_a**2 * half_sq[None]) / sb2[r, None]
                x_hat[r] = torch.softmax(logits, dim=1) @ support
        eps = (zf - sa[:, None] * x_hat) / sb2.sqrt()[:, None]
        return eps.float().view(z.shape).to(z.device)
