"""PID with known answers: the textbook discrete cases, every pointwise term estimated by the I-MMSE
estimator on the exact discrete denoiser, must match the published I_min values within 0.02 bits."""
import numpy as np
import pytest
import torch

from nbhelpers.pid import (PUBLISHED_IMIN_BITS, decompose, discrete_pid_case, discrete_pid_with_denoiser,
                           williams_beer_pid)

LN2 = np.log(2)


def _exact(p):
    return williams_beer_pid(p, lambda x, a: np.log(p[x, a, :].sum() / p[:, a, :].sum() / p[x].sum()),
                             lambda x, b: np.log(p[x, :, b].sum() / p[:, :, b].sum() / p[x].sum()),
                             lambda x, a, b: np.log(p[x, a, b] / p[:, a, b].sum() / p[x].sum()))


@pytest.mark.parametrize("case", list(PUBLISHED_IMIN_BITS))
def test_exact_imin_reproduces_published_values(case):
    got = _exact(discrete_pid_case(case))
    for term, bits in PUBLISHED_IMIN_BITS[case].items():
        assert got[term] / LN2 == pytest.approx(bits, abs=1e-3), (case, term)


@pytest.mark.parametrize("case", list(PUBLISHED_IMIN_BITS))
def test_estimated_pid_matches_published_values(case):
    p = discrete_pid_case(case)
    support = torch.randn(p.shape[0], 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    est = discrete_pid_with_denoiser(p, support, n=200_000, seed=0)
    exact = _exact(p)
    for term, bits in PUBLISHED_IMIN_BITS[case].items():
        assert abs(est[term] / LN2 - bits) < 0.02, (case, term, est[term] / LN2, bits)
        # and within 4 of its own standard errors of the exact value (the error is honest, not just small)
        assert abs(est[term] - exact[term]) <= 4 * est["stderr"][term] + 1e-9, (case, term, est[term], exact[term])


def test_pointwise_decomposition_and_negative_values():
    d = decompose(1.0, 2.0, 3.5)
    assert d == {"redundancy": 1.0, "unique1": 0.0, "unique2": 1.0, "synergy": 1.5}
    neg = decompose(np.array([-0.2, 0.5]), np.array([0.3, 0.1]), np.array([0.0, 0.4]))
    assert neg["redundancy"][0] == -0.2  # reported as is, not clipped
    total = neg["redundancy"] + neg["unique1"] + neg["unique2"] + neg["synergy"]
    assert np.allclose(total, [0.0, 0.4])  # the four terms add up to i12
