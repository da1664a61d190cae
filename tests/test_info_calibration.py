"""The estimator's design against closed forms: the default (standard) form is the pointwise
information of one sample, its reported standard error matches the spread across seeds (one image,
and an average over images with several samples each), n="auto" reaches its target, and the
README's Denoiser protocol (cond=None for the unconditional denoiser) works as written."""
import math

import numpy as np
import pytest
import torch

from nbhelpers.closed_form import GaussianDenoiser
from nbhelpers.immse import LogSNRSampler, information_terms


@pytest.fixture(scope="module")
def gaussian():
    return GaussianDenoiser.example()


WIDE = LogSNRSampler(0.0, 2.0, 8.0)  # [-16, 16]: truncation far below the errors below


def test_default_form_is_the_pointwise_information_of_one_sample(gaussian):
    x, c = gaussian.sample(4, torch.Generator().manual_seed(11))
    exact = gaussian.pointwise_mi(x, c)
    for j in range(4):  # each sample alone, with the estimator's defaults (standard form)
        r = information_terms(gaussian, x[j : j + 1], {"null": None, "y": c[j : j + 1]}, {"i": ("null", "y")},
                              n=4000, sampler=WIDE, keep_map=False, seed=20 + j)["i"]
        assert r.form == "standard"
        assert abs(r.value - float(exact[j])) < 2.5 * r.stderr, (j, r, float(exact[j]))  # 4 checks: 2.5 SE each
        assert r.stderr < 0.1


def test_orthogonal_form_is_not_the_pointwise_information(gaussian):
    x, c = gaussian.sample(4, torch.Generator().manual_seed(11))
    exact = gaussian.pointwise_mi(x, c)
    off = []
    for j in range(4):
        r = information_terms(gaussian, x[j : j + 1], {"null": None, "y": c[j : j + 1]}, {"i": ("null", "y")},
                              n=4000, form="orthogonal", sampler=WIDE, keep_map=False, seed=20 + j)["i"]
        assert r.symbol == "iᵒ" and "orthogonal" in repr(r)
        off.append(abs(r.value - float(exact[j])) / r.stderr)
    assert max(off) > 10  # tens of standard errors away for some sample


def _spread_over_seeds(gaussian, x, c, form, seeds=60, n=32, **kw):
    rs = [information_terms(gaussian, x, {"null": None, "y": c}, {"i": ("null", "y")}, n=n, form=form, seed=s,
                            keep_map=False, **kw)["i"] for s in range(seeds)]
    v = np.array([r.value for r in rs])
    return v.std(ddof=1) / np.mean([r.stderr for r in rs])


@pytest.mark.parametrize("form", ["standard", "orthogonal"])
@pytest.mark.parametrize("n_images", [1, 8])
def test_reported_standard_errors_match_the_spread_across_seeds(gaussian, form, n_images):
    x, c = gaussian.sample(n_images, torch.Generator().manual_seed(3))
    ratios = [_spread_over_seeds(gaussian, x, c, form, seeds=60)]
    ratios += [_spread_over_seeds(gaussian, x, c, form, seeds=60, stratified=False, antithetic=False)]
    # 60 seeds: the spread itself is known to ±9 % (one standard error), so allow 0.75-1.25
    for r in ratios:
        assert 0.75 < r < 1.25, ratios


def test_auto_samples_until_the_target_precision(gaussian):
    x, c = gaussian.sample(1, torch.Generator().manual_seed(3))
    r = information_terms(gaussian, x, {"null": None, "y": c}, {"i": ("null", "y")}, n="auto", target_stderr=0.15,
                          keep_map=False)["i"]
    assert r.stderr <= 0.15 and r.params["reached_target"] and r.params["rounds"] > 1
    assert r.params["n"] == "auto" and len(r.gap) == 32 * r.params["rounds"]
    capped = information_terms(gaussian, x, {"null": None, "y": c}, {"i": ("null", "y")}, n="auto",
                               target_stderr=1e-4, max_n=64, keep_map=False)["i"]
    assert capped.params["rounds"] == 2 and not capped.params["reached_target"]
    with pytest.raises(ValueError, match="target_stderr"):
        information_terms(gaussian, x, {"null": None, "y": c}, {"i": ("null", "y")}, n="auto")
    with pytest.raises(ValueError, match="odd"):
        information_terms(gaussian, x, {"null": None, "y": c}, {"i": ("null", "y")}, n=5)
    with pytest.raises(ValueError, match="positive whole number"):
        information_terms(gaussian, x, {"null": None, "y": c}, {"i": ("null", "y")}, n=0)


def test_a_denoiser_written_from_the_readme_alone_works():
    class Shrink:
        """x ~ N(0, v I) in 3 dimensions; the condition is the prior variance v (B, 1); None = v0."""

        latent_shape = (3, 1, 1)

        def eps(self, z, logsnr, cond):
            v = torch.full((z.shape[0], 1), 2.0) if cond is None else cond.expand(z.shape[0], 1)
            a = torch.as_tensor(logsnr, dtype=torch.float32).reshape(-1).expand(z.shape[0])
            s, s2 = torch.sigmoid(a).sqrt(), torch.sigmoid(-a)
            # E[ε | z] for x ~ N(0, v): z ~ N(0, s² v + σ(-α)), Cov(ε, z) = sqrt(σ(-α))
            return (z * (s2.sqrt() / (s ** 2 * v[:, 0] + s2)).view(-1, 1, 1, 1)).float()

    den = Shrink()
    x = torch.zeros(1, 3, 1, 1)
    r = information_terms(den, x, {"none": None, "v": torch.tensor([[0.5]])}, {"i": ("none", "v")}, n=64,
                          keep_map=False)["i"]
    assert math.isfinite(r.value) and r.params["evaluations"] == 128


@pytest.mark.parametrize("share", [0.0, 0.3, 0.5, 1.0])
def test_log_snr_density_is_a_normalised_density_with_its_inverse_cdf(share):
    s = LogSNRSampler(1.0, 2.0, 3.0, uniform_share=share)
    lo, hi = s.range
    grid = torch.linspace(lo, hi, 20001, dtype=torch.float64)
    assert torch.trapezoid(s.density(grid), grid).item() == pytest.approx(1.0, abs=1e-6)
    u = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
    alpha, weight = s.sample(u)
    assert torch.all(torch.diff(alpha) > 0) and lo <= alpha.min() and alpha.max() <= hi
    assert torch.allclose(s.cdf(alpha), u, atol=1e-12)
    assert torch.allclose(weight, 1 / s.density(alpha))
    # importance weights integrate: the mean of w·f over stratified u is ∫ f dα (f a bump, exact integral)
    f = lambda a: torch.exp(-0.5 * (a - 2.0) ** 2)  # noqa: E731
    u = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000
    a, w = s.sample(u)
    exact = math.sqrt(2 * math.pi) * 0.5 * (math.erf((hi - 2) / math.sqrt(2)) - math.erf((lo - 2) / math.sqrt(2)))
    assert (w * f(a)).mean().item() == pytest.approx(exact, rel=1e-4)


def test_mixture_density_keeps_the_estimate_pointwise_exact(gaussian):
    """The trained models' default density (half uniform) on the closed form: still the exact pointwise value."""
    x, c = gaussian.sample(2, torch.Generator().manual_seed(5))
    exact = gaussian.pointwise_mi(x, c)
    mixed = LogSNRSampler(0.0, 2.0, 8.0, uniform_share=0.5)
    for j in range(2):
        r = information_terms(gaussian, x[j : j + 1], {"null": None, "y": c[j : j + 1]}, {"i": ("null", "y")},
                              n=4000, sampler=mixed, keep_map=False, seed=40 + j)["i"]
        assert r.params["uniform_share"] == 0.5 and LogSNRSampler.of(r) == mixed
        assert abs(r.value - float(exact[j])) < 2.5 * r.stderr, (j, r, float(exact[j]))


def test_models_with_a_trained_range_get_the_mixture_closed_forms_the_published_density(gaussian):
    class Ranged:
        logsnr_range = (-6.0, 8.0)

    s = LogSNRSampler.for_model(Ranged())
    assert s.range == pytest.approx((-6.0, 8.0)) and s.uniform_share == 0.5
    assert LogSNRSampler.for_model(gaussian) == LogSNRSampler(1.0, 2.0, 3.0, 0.0)
    with pytest.raises(ValueError, match="uniform_share"):
        LogSNRSampler(uniform_share=1.5)
