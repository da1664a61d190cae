"""Science checks of the I-MMSE estimators against closed forms. Each would fail on a wrong estimator
(flip the sign of a term, drop the importance weight, or change the ½ factor)."""
import math

import numpy as np
import pytest
import torch

from nbhelpers.closed_form import DiscreteDenoiser, GaussianDenoiser
from nbhelpers.immse import InfoResult, LogSNRSampler, information_terms


@pytest.fixture(scope="module")
def gaussian():
    return GaussianDenoiser.example()


def test_sampler_weights_integrate_exactly():
    s = LogSNRSampler(loc=1.0, scale=2.0, clip=3.0)
    u = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000
    a, w = s.sample(u)
    lo, hi = s.range
    assert a.min() >= lo and a.max() <= hi
    assert float(w.mean()) == pytest.approx(hi - lo, rel=1e-3)  # ∫ 1 dα
    exact = math.log1p(math.exp(hi)) - math.log1p(math.exp(lo))  # ∫ σ(α) dα
    assert float((w * torch.sigmoid(a)).mean()) == pytest.approx(exact, rel=1e-3)


def test_sampler_defaults_span_the_models_trained_range(gaussian):
    class M:
        logsnr_range = (-5.36, 7.07)

    s = LogSNRSampler.for_model(M())
    assert s.range == pytest.approx((-5.36, 7.07))
    assert LogSNRSampler.for_model(gaussian).range == pytest.approx((-5.0, 7.0))  # no range: loc 1, scale 2


@pytest.mark.parametrize("form", ["standard", "orthogonal"])
def test_gaussian_mi_matches_half_log_det_ratio(gaussian, form):
    g = torch.Generator().manual_seed(1)
    x, c = gaussian.sample(4000, g)
    sampler = LogSNRSampler(1.0, 2.0, 3.0)
    r = information_terms(gaussian, x, {"null": gaussian.unconditional(), "y": c}, {"mi": ("null", "y")}, n=1,
                          antithetic=False, form=form, sampler=sampler, batch_size=4000, keep_map=False, seed=2)["mi"]
    exact = gaussian.truncated_mi(*sampler.range)
    assert abs(r.value - exact) < 2 * r.stderr, (r, exact)
    # the truncation bias is real and known: the full-range MI differs
    assert abs(gaussian.mi() - exact) > 0.01
    assert r.per_item.shape == (4000,)


def test_gaussian_wide_range_recovers_the_full_mi(gaussian):
    g = torch.Generator().manual_seed(3)
    x, c = gaussian.sample(4000, g)
    r = information_terms(gaussian, x, {"null": gaussian.unconditional(), "y": c}, {"mi": ("null", "y")}, n=1,
                          antithetic=False, sampler=LogSNRSampler(0.0, 2.0, 8.0), batch_size=4000, keep_map=False)["mi"]
    assert abs(r.value - gaussian.mi()) < 2 * r.stderr + 1e-3


@pytest.fixture(scope="module")
def discrete():
    g = torch.Generator().manual_seed(4)
    return DiscreteDenoiser(torch.randn(4, 6, generator=g, dtype=torch.float64) * 1.5)


def test_discrete_standard_form_is_exact_for_one_x(discrete):
    px = discrete.log_probs([0.25, 0.25, 0.25, 0.25])
    pxy = discrete.log_probs([0.7, 0.1, 0.1, 0.1])
    sampler = LogSNRSampler(0.0, 2.0, 6.0)
    for j in range(4):  # four comparisons: a Bonferroni-corrected 2.5 standard errors each
        r = information_terms(discrete, discrete.latents(j), {"w": px, "s": pxy}, {"i": ("w", "s")}, n=20000,
                              form="standard", sampler=sampler, batch_size=20000, seed=10 + j)["i"]
        exact = float(pxy[0, j] - px[0, j])  # log p(x|y) / p(x)
        assert abs(r.value - exact) < 2.5 * r.stderr, (j, r, exact)
        assert r.stderr < 0.03


def test_both_forms_agree_on_average_but_not_per_x(discrete):
    px = discrete.log_probs([0.25, 0.25, 0.25, 0.25])
    pxy = discrete.log_probs([0.7, 0.1, 0.1, 0.1])
    sampler = LogSNRSampler(0.0, 2.0, 6.0)
    xs = discrete.latents(torch.multinomial(pxy.exp()[0], 3000, replacement=True,
                                            generator=torch.Generator().manual_seed(5)))
    kl = float((pxy.exp() * (pxy - px)).sum())  # E_{x~p(x|y)} log p(x|y)/p(x)
    res = {f: information_terms(discrete, xs, {"w": px, "s": pxy}, {"i": ("w", "s")}, n=1, form=f, sampler=sampler, antithetic=False,
                                batch_size=3000, seed=6)["i"] for f in ("standard", "orthogonal")}
    for f, r in res.items():
        assert abs(r.value - kl) < 2 * r.stderr, (f, r, kl)
    assert res["orthogonal"].stderr < res["standard"].stderr  # the point of the orthogonal form
    # per x, the orthogonal form is never negative, unlike the (exact) pointwise information
    one = information_terms(discrete, discrete.latents(1), {"w": px, "s": pxy}, {"i": ("w", "s")}, n=2000,
                            form="orthogonal", sampler=sampler, batch_size=2000)["i"]
    assert one.value > 0 > float(pxy[0, 1] - px[0, 1])


def test_maps_sum_to_the_scalar_and_results_round_trip(discrete, tmp_path):
    px = discrete.log_probs([0.25] * 4)
    pxy = discrete.log_probs([0.4, 0.3, 0.2, 0.1])
    r = information_terms(discrete, discrete.latents(0), {"w": px, "s": pxy}, {"i": ("w", "s")}, n=64,
                          form="standard")["i"]
    assert r.map.shape == (1, 1) and float(r.map.sum()) == pytest.approx(r.value, rel=1e-9)
    bits = r.to("bits")
    assert bits.value == pytest.approx(r.value / math.log(2)) and bits.units == "bits"
    r.save(tmp_path / "r.json")
    back = InfoResult.load(tmp_path / "r.json")
    assert back.value == r.value and np.array_equal(back.gap, r.gap) and back.params == r.params


def test_common_random_numbers_and_determinism(gaussian):
    x, c = gaussian.sample(8, torch.Generator().manual_seed(7))
    conds = {"null": gaussian.unconditional(), "y": c, "y2": c.clone()}
    r = information_terms(gaussian, x, conds, {"mi": ("null", "y"), "mi2": ("null", "y2"), "zero": ("y", "y2")},
                          n=16, seed=3)
    assert r["mi"].value == r["mi2"].value  # identical conditions see identical (α, ε)
    assert r["zero"].value == 0.0
    again = information_terms(gaussian, x, conds, {"mi": ("null", "y")}, n=16, seed=3)["mi"]
    assert again.value == r["mi"].value
    with pytest.raises(KeyError, match="not among"):
        information_terms(gaussian, x, conds, {"bad": ("null", "nope")}, n=4)
    with pytest.raises(ValueError, match="form"):
        information_terms(gaussian, x, conds, {"mi": ("null", "y")}, n=4, form="other")
