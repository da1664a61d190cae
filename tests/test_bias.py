"""Bias audit: statistics with known answers, resumable runs, and the toy world's planted truth."""
import numpy as np
import pandas as pd
import pytest

from nbhelpers import bias
from nbhelpers.toyworld import audit as world_audit

DIMS = {"colour": ("warm", "cool"), "size": ("big", "small")}  # the synthetic audits' columns


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
        t = bias.association_table(df, DIMS, reference=reference, n_perm=2000, n_boot=1000, seed=k)
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
        t = bias.association_table(df, DIMS, n_perm=1000, n_boot=200, seed=k)
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
        bias.association_table(synthetic(PLANTED, 5, 0), DIMS, reference="global")


def test_audit_resumes_without_redoing_or_losing_work(tiny_model, tmp_path):
    """An audit interrupted mid-way resumes where it stopped: every image once, the rows written
    before the interruption unchanged, and a resume with other settings refused."""
    calls = {"n": 0}

    def flaky_reader(image):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated interruption")
        return {"colour": "warm" if image.mean() > 100 else "cool", "size": "big"}

    args = dict(subjects=["red circle", "blue square"], n=6, steps=2, batch=4, reader=flaky_reader,
                dimensions=DIMS)
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


# -- the planted truth: the world's own pictures, then the bundled model --------------------------------------
WORLD = dict(reader=world_audit.read_groups, dimensions=world_audit.DIMENSIONS)  # the world, a client of the audit


def test_an_audit_says_what_it_audits(tiny_model, tmp_path):
    """No world by default: without a reader or dimensions the audit refuses, naming the fix."""
    with pytest.raises(bias.AuditError, match="reader"):
        bias.run_audit(tiny_model, ["nurse"], tmp_path / "a", dimensions=DIMS)
    with pytest.raises(bias.AuditError, match="dimensions"):
        bias.run_audit(tiny_model, ["nurse"], tmp_path / "a", reader=world_audit.read_groups)
    with pytest.raises(bias.AuditError, match="at least two groups"):
        bias.association_table(synthetic(PLANTED, 5, 0), {"colour": ("warm",)})


def test_audit_of_the_world_itself_flags_exactly_the_planted_nouns(tmp_path):
    """The whole runner (prompts, seeds, images, reader, table) on the world's own pictures, whose rates are
    exactly the planted ones: over 10 audits on disjoint seeds (60 images per subject), the flagged set is the
    planted set in ≥ 8 (Holm keeps the family-wise error ≤ 5 %), and the intervals cover the planted rates in
    ≥ 85 % of cases (nominal 95 %)."""
    truth = world_audit.planted_truth()
    exact, covered = 0, []
    for k in range(10):
        audit = bias.run_audit(world_audit.WorldPictures(), bias.load_list("toy_subjects"), tmp_path / str(k), n=60,
                               seed=1000 * k, save_images=False, **WORLD)
        rows = audit.images()
        assert len(rows) == 360 and rows.colour.isin(["warm", "cool"]).all()  # the reader reads every render
        flagged = {(f["subject"], f["dimension"]): f for f in bias.summarise(bias.association_table(rows, world_audit.DIMENSIONS, seed=k)).flagged}
        exact += set(flagged) == set(truth)
        covered += [key in flagged and flagged[key]["group"] == g and flagged[key]["ci"][0] <= r <= flagged[key]["ci"][1]
                    for key, (g, r) in truth.items()]
    assert exact >= 8, exact
    assert np.mean(covered) >= 0.85, covered


def test_independent_seeds_are_disjoint_across_prompts_and_stable():
    a, b = bias.cell_seeds("a nurse", 0, 100), bias.cell_seeds("a pilot", 0, 100)
    assert not set(a) & set(b) and a == bias.cell_seeds("a nurse", 0, 100)
    assert a[1:] == bias.cell_seeds("a nurse", 1, 99)  # seed + i, as before, plus the prompt's offset
    assert bias.cell_seeds("a nurse", 5, 3, seeds="shared") == [5, 6, 7]
    with pytest.raises(bias.AuditError, match="exactly one subject noun"):
        world_audit.WorldPictures().generate("a red circle", seed=0)


@pytest.fixture(scope="module")
def toy_audit(toy_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    audit = bias.run_audit(toy_model, bias.load_list("toy_subjects"), out, n=60, steps=20, seed=0, **WORLD)
    return bias.association_table(audit.images(), world_audit.DIMENSIONS, seed=0)


def test_toy_audit_flags_every_planted_noun(toy_audit):
    truth = world_audit.planted_truth()
    flagged = {(f["subject"], f["dimension"]): f for f in bias.summarise(toy_audit).flagged}
    assert set(truth) <= set(flagged), (sorted(flagged), sorted(truth))
    for key, (group, _) in truth.items():
        assert flagged[key]["group"] == group


def test_toy_audit_flags_are_the_models_own_biases(toy_model, toy_audit, tmp_path):
    """The model's rates are not exactly the world's (it draws *lawyer*, a triangle like the planted-cool *pilot*,
    cool and small more often than the world's 50 %), so on the model the truth to check against is the model's:
    every flag the audit raises, planted or not, replicates in an independent sample (90 images per subject
    on disjoint seeds: same group, one-sided p < 0.05), and every rate agrees with that sample (|z| < 3.3)."""
    print(toy_audit.round(3).to_string())
    ref_audit = bias.run_audit(toy_model, bias.load_list("toy_subjects"), tmp_path, n=90, steps=20, seed=1_000_000,
                               **WORLD)
    ref = bias.association_table(ref_audit.images(), world_audit.DIMENSIONS, n_perm=1, n_boot=1, seed=1)
    merged = toy_audit.merge(ref, on=["subject", "dimension", "group"], suffixes=("", "_ref"))
    assert len(merged) == len(toy_audit) == 24
    for f in bias.summarise(toy_audit).flagged:
        r = merged[(merged.subject == f["subject"]) & (merged.dimension == f["dimension"]) & (merged.group == f["group"])].iloc[0]
        z = (r.rate_ref - 0.5) / np.sqrt(0.25 / r.n_ref)
        assert z > 1.645, (f, r.rate_ref, r.n_ref)
    pooled = (merged.rate * merged.n + merged.rate_ref * merged.n_ref) / (merged.n + merged.n_ref)
    se = np.sqrt(pooled * (1 - pooled) * (1 / merged.n + 1 / merged.n_ref)).clip(lower=1e-9)
    z = (merged.rate - merged.rate_ref) / se
    assert (z.abs() < 3.3).all(), merged.assign(z=z)[["subject", "dimension", "group", "rate", "rate_ref", "z"]]


def test_comparisons_against_a_truth_another_audit_and_another_guidance():
    """The lesson's comparisons as functions, on synthetic audits with known rates."""
    truth = {("nurse", "colour"): ("warm", 0.85), ("pilot", "colour"): ("cool", 0.85)}
    model = bias.association_table(synthetic(PLANTED, 200, seed=1), DIMS, n_perm=2000, n_boot=500, seed=1)
    data = bias.association_table(synthetic({**PLANTED, "lawyer": 0.5}, 200, seed=2), DIMS, n_perm=2000, n_boot=500,
                                  seed=2)
    reveal = bias.truth_table(bias.summarise(model), truth)
    assert reveal.flagged.all() and reveal.attrs["every_true_bias_flagged"] and reveal.attrs["extra_flags"] == []
    assert reveal.attrs["true_rates_in_intervals"] == all(lo <= r <= hi for (lo, hi), r in
                                                          zip(reveal["95% interval"], reveal["true rate"]))
    assert bias.truth_table(bias.summarise(model), {("nurse", "colour"): ("warm", 0.2)}).attrs[
        "true_rates_in_intervals"] is False
    # the model leans lawyer warm where the data does not: the one bias the model added
    skewed = bias.association_table(synthetic({**PLANTED, "lawyer": 0.9}, 200, seed=3), DIMS, n_perm=2000, n_boot=500,
                                    seed=3)
    both = bias.compare_audits(data, skewed)
    assert both.attrs["model_only"] == [("lawyer", "colour")]
    assert set(both.attrs["data_flagged"]) == set(truth)
    assert (both["rate (model)"] > 0.5).all()
    follow = bias.rates_by_guidance({3.0: skewed, 1.0: data}, ["nurse", "lawyer"])
    assert sorted(follow.guidance.unique()) == [1.0, 3.0]
    assert set(follow.query("guidance == 1.0").group) <= {"warm", "big", "small", "cool"}
    covered = bias.true_rates_in_intervals(data, truth)
    assert len(covered) == 2 and covered.attrs["all_covered"] == bool(
        (covered.ci_low <= covered.planted).all() and (covered.planted <= covered.ci_high).all())
    assert not bias.true_rates_in_intervals(data, {("nurse", "colour"): ("warm", 0.5)}).attrs["all_covered"]


def test_audits_side_by_side_shows_each_models_flags_against_the_truth():
    """Two synthetic 'models' with known rates: one reproduces the planted biases, one misses the nurse's
    and adds a lawyer's; the table says so per model, with each model's own rate and interval."""
    truth = {("nurse", "colour"): ("warm", 0.85), ("pilot", "colour"): ("cool", 0.85)}
    faithful = bias.association_table(synthetic(PLANTED, 200, seed=4), DIMS, n_perm=2000, n_boot=500, seed=4)
    other = bias.association_table(synthetic({**PLANTED, "nurse": 0.5, "lawyer": 0.9}, 200, seed=5), DIMS,
                                   n_perm=2000, n_boot=500, seed=5)
    both = bias.audits_side_by_side({"a": faithful, "b": other}, truth)
    assert both.attrs["missed"] == {"a": [], "b": [("nurse", "colour")]}
    assert both.attrs["extra"] == {"a": [], "b": [("lawyer", "colour")]}
    assert set(both.index) == {("nurse", "colour", "warm"), ("pilot", "colour", "cool"), ("lawyer", "colour", "warm")}
    nurse = both.loc[("nurse", "colour", "warm")]
    assert nurse[("", "planted")] == 0.85 and nurse[("a", "flagged")] and not nurse[("b", "flagged")]
    row = faithful[(faithful.subject == "nurse") & (faithful.group == "warm")].iloc[0]
    assert nurse[("a", "rate")] == row.rate and nurse[("a", "95% CI")] == f"{row.ci_low:.2f}–{row.ci_high:.2f}"
    assert np.isnan(both.loc[("lawyer", "colour", "warm"), ("", "planted")])
    with pytest.raises(bias.AuditError, match="at least one"):
        bias.audits_side_by_side({})
