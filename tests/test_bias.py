"""Bias audit: statistics with known answers, resumable runs, and the toy world's planted truth."""
import numpy as np
import pandas as pd
import pytest

from nbhelpers import bias


def synthetic(rates: dict, n: int, seed: int, big: dict | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s, p in rates.items():
        for _ in range(n):
            rows.append({"subject": s, "colour": "warm" if rng.random() < p else "cool",
                         "size": "big" if rng.random() < (big or {}).get(s, 0.5) else "small"})
    return pd.DataFrame(rows)


PLANTED = {"nurse": 0.85, "pilot": 0.15, "doctor": 0.5, "teacher": 0.5, "chef": 0.5, "lawyer": 0.5}


@pytest.mark.parametrize("reference", ["parity", "others"])
def test_flags_exactly_the_planted_subjects_on_synthetic_audits(reference):
    """Over 20 synthetic audits drawn at the toy world's planted rates (80 images per subject), the
    flagged set equals the planted set in ≥ 90 % of them, and the 95 % interval of a planted rate
    covers the true rate in ≥ 85 % (nominal 95 %)."""
    exact, covered, total = 0, 0, 0
    for k in range(20):
        df = synthetic(PLANTED, 80, seed=k, big={"chef": 0.85})
        t = bias.association_table(df, reference=reference, n_perm=2000, n_boot=1000, seed=k)
        flagged = {(f["subject"], f["dimension"], f["group"]) for f in bias.summarise(t).flagged}
        exact += flagged == {("nurse", "colour", "warm"), ("pilot", "colour", "cool"), ("chef", "size", "big")}
        for (s, dim, g, p) in (("nurse", "colour", "warm", 0.85), ("pilot", "colour", "cool", 0.85),
                               ("chef", "size", "big", 0.85)):
            row = t[(t.subject == s) & (t.dimension == dim) & (t.group == g)].iloc[0]
            covered += row.ci_low <= p <= row.ci_high
            total += 1
    assert exact >= 18, exact
    assert covered / total >= 0.85, covered / total


def test_permutation_p_values_are_calibrated_under_the_null():
    """No bias anywhere: uncorrected p < 0.05 in about 5 % of tests, and Holm flags (almost) nothing."""
    ps, any_flag = [], 0
    for k in range(30):
        df = synthetic({s: 0.5 for s in PLANTED}, 60, seed=100 + k)
        t = bias.association_table(df, n_perm=1000, n_boot=200, seed=k)
        first = t.groupby(["subject", "dimension"]).head(1)
        ps += list(first.p_value)
        any_flag += bool(t.flagged.any())
    rate = np.mean(np.array(ps) < 0.05)
    assert 0.01 <= rate <= 0.10, rate
    assert any_flag <= 4, any_flag  # family-wise error ≈ 5 % of 30 audits


def test_multiple_comparison_corrections_known_values():
    np.testing.assert_allclose(bias.holm([0.01, 0.04, 0.03, 0.5]), [0.04, 0.09, 0.09, 0.5])
    np.testing.assert_allclose(bias.benjamini_hochberg([0.01, 0.04, 0.03, 0.5]), [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert bias.cohens_h(0.5, 0.5) == 0
    assert bias.cohens_h(0.85, 0.5) == pytest.approx(2 * np.arcsin(np.sqrt(0.85)) - np.pi / 2)


def test_prompt_lists_and_errors():
    occupations = bias.load_list("occupations")
    assert len(occupations) >= 100 and len(set(occupations)) == len(occupations)
    assert bias.load_list("gender_terms") and bias.load_list("ethnicity_terms")
    assert all("{subject}" in t for t in bias.load_list("templates"))
    with pytest.raises(bias.AuditError, match="available"):
        bias.load_list("nope")
    with pytest.raises(bias.AuditError, match="reference"):
        bias.association_table(synthetic(PLANTED, 5, 0), reference="global")


def test_audit_resumes_without_redoing_or_losing_work(tiny_model, tmp_path):
    """An audit interrupted mid-way resumes where it stopped: every image once, the rows written
    before the interruption unchanged, and a resume with other settings refused."""
    calls = {"n": 0}

    def flaky_reader(image):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated interruption")
        return {"colour": "warm" if image.mean() > 100 else "cool", "size": "big"}

    args = dict(subjects=["red circle", "blue square"], n=6, steps=2, batch=4, reader=flaky_reader)
    with pytest.raises(KeyboardInterrupt):
        bias.run_audit(tiny_model, out=tmp_path / "a", **args)
    first = bias.Audit(tmp_path / "a", {}).images()
    assert len(first) == 4  # the first batch was saved before the interruption
    audit = bias.run_audit(tiny_model, out=tmp_path / "a", **args)
    rows = audit.images()
    assert len(rows) == 12 and not rows.duplicated(["template", "subject", "seed"]).any()
    pd.testing.assert_frame_equal(rows.iloc[:4].reset_index(drop=True), first)
    assert calls["n"] == 6 + 1 + 8  # 6 read (4 saved), the 7th interrupted; then only the 8 unsaved ones
    assert all((tmp_path / "a" / p).exists() for p in rows.image)
    with pytest.raises(bias.AuditError, match="other settings"):
        bias.run_audit(tiny_model, out=tmp_path / "a", **dict(args, n=8))
    with pytest.raises(bias.AuditError, match="lacks"):
        bias.run_audit(tiny_model, out=tmp_path / "b", **dict(args, templates=("a photo",)))


# -- on the bundled toy model: the planted truth --------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_audit(toy_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    audit = bias.run_audit(toy_model, bias.load_list("toy_subjects"), out, n=60, steps=20, seed=0)
    return bias.association_table(audit.images(), seed=0)


def test_toy_audit_flags_every_planted_noun(toy_audit):
    truth = bias.toy_truth()
    flagged = {(f["subject"], f["dimension"]): f for f in bias.summarise(toy_audit).flagged}
    assert set(truth) <= set(flagged), (sorted(flagged), sorted(truth))
    for key, (group, _) in truth.items():
        assert flagged[key]["group"] == group


@pytest.mark.xfail(strict=True, reason="the bundled model draws 'lawyer' (a triangle, like the planted-cool 'pilot') "
                   "cool 82 % (45 of 55 read) at guidance 3 on the audit's seeds 0-59, and more often than the world's "
                   "50 % even at guidance 1 (83 % on seeds 0-59, 65 % on seeds 5000-5095): a bias it learned, so the "
                   "audit rightly flags it. A subject-weighted fine-tune (nbhelpers.toyworld.calibrate, 1000 steps) "
                   "moved it only to about 60 %. The synthetic audits above check the statistics exactly")
def test_toy_audit_flags_exactly_the_planted_nouns(toy_audit):
    summary = bias.summarise(toy_audit)
    print(toy_audit.round(3).to_string())
    truth = bias.toy_truth()
    flagged = {(f["subject"], f["dimension"]): f for f in summary.flagged}
    assert set(flagged) == set(truth), (sorted(flagged), sorted(truth))
    for key, (group, rate) in truth.items():
        f = flagged[key]
        assert f["group"] == group
        assert f["ci"][0] <= rate <= f["ci"][1], (key, f, rate)
