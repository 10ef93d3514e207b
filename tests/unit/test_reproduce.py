"""The reproduction check: allowances derived from the seed spread and the bootstrap intervals;
a drift inside them passes, a broken run fails, each row says which rule bound it."""

import json

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.evaluation.scoring import classification_metrics
from pipeline.evaluation.uncertainty import Bootstrap
from pipeline.reproduction import reproduce, tolerances

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
RULES = tolerances.Rules(
    factor=3, floor=0.005, compared=("accuracy", "balanced_accuracy", "macro_f1", "ece", "melanoma_recall", "recall")
)


def scored(probabilities, labels, groups):
    boot = Bootstrap.of(labels, groups, 1000, 0, 0.95, CLASSES.index("mel"))
    return {**classification_metrics(labels, probabilities, CLASSES, 15), **boot.intervals(probabilities, CLASSES)}


@pytest.fixture(scope="module")
def test_set():
    rng = np.random.default_rng(0)
    labels = rng.choice(7, 1400, p=[0.03, 0.05, 0.11, 0.012, 0.11, 0.67, 0.018])
    groups = np.arange(1400) // 2  # lesions of two images

    def model(skill, seed, retrain_seed=None):
        """Scores of a model; another training run of it keeps most of its errors (its scores
        move a little), as two seeds of one recipe do."""
        noise = np.random.default_rng(seed).normal(size=(1400, 7))
        if retrain_seed is not None:
            noise += 0.3 * np.random.default_rng(retrain_seed).normal(size=(1400, 7))
        noise[np.arange(1400), labels] += skill
        return np.exp(noise) / np.exp(noise).sum(axis=1, keepdims=True)

    return labels, groups, model


def seed_table(values):
    return {
        "cnn_focal": {
            metric: {"mean": 0.6, "std": std, "n": 3, "min": 0.5, "max": 0.7} for metric, std in values.items()
        }
    }


def test_allowance_is_the_factor_times_the_larger_of_seed_sd_and_bootstrap_se(test_set):
    labels, groups, model = test_set
    reference = {"cnn_focal": scored(model(2.0, 1), labels, groups)}
    low, high = reference["cnn_focal"]["balanced_accuracy_ci"]
    se = (high - low) / 3.919927969080108
    wide = tolerances.derive(reference, seed_table({"balanced_accuracy": 0.05, "accuracy": 0.0001}), RULES)["cnn_focal"]
    assert (
        wide["balanced_accuracy"]["allowed"] == pytest.approx(0.15)
        and "seed sd (3 seeds)" in wide["balanced_accuracy"]["rule"]
    )
    accuracy = wide["accuracy"]  # the seed sd is smaller: bootstrap or binomial se binds
    assert accuracy["allowed"] == pytest.approx(3 * max(accuracy["bootstrap_se"], accuracy["binomial_se"]), abs=1e-6)
    assert (
        accuracy["rule"].startswith(("3 x bootstrap se", "3 x binomial se")) and 0.005 < accuracy["binomial_se"] < 0.02
    )
    assert wide["recall.vasc"]["bootstrap_se"] > wide["recall.nv"]["bootstrap_se"]  # 25 vs 940 images
    unseeded = tolerances.derive(reference, {}, RULES)["cnn_focal"]
    assert unseeded["balanced_accuracy"]["allowed"] == pytest.approx(3 * se, abs=1e-6)
    assert "roc_auc_macro" not in unseeded and "images" not in unseeded and "precision.mel" not in unseeded


def test_ensemble_takes_its_largest_members_seed_sd_and_a_constant_gets_the_floor():
    reference = {
        "ensemble": {"balanced_accuracy": 0.7, "weights": {"cnn_focal": 0.2, "effnet_lite0": 0.8, "effnetb7": 0.0}},
        "effnetb7": {"balanced_accuracy": 0.142857, "balanced_accuracy_ci": [0.142857, 0.142857]},
    }
    spread = {
        "cnn_focal": {"balanced_accuracy": {"std": 0.03, "n": 3}},
        "effnet_lite0": {"balanced_accuracy": {"std": 0.01, "n": 3}},
    }
    allowed = tolerances.derive(reference, spread, RULES)
    assert allowed["ensemble"]["balanced_accuracy"]["allowed"] == pytest.approx(0.09)
    assert "members' seed sd" in allowed["ensemble"]["balanced_accuracy"]["rule"]
    assert allowed["effnetb7"]["balanced_accuracy"] == {
        "allowed": 0.005,
        "rule": "floor 0.005",
        "seed_sd": None,
        "bootstrap_se": 0.0,
        "binomial_se": None,
    }


def test_a_recall_at_0_or_1_on_few_images_gets_its_binomial_se_not_the_floor():
    """CI on 2026-12-02: the demo CNN's vasc recall was 1.0 (2 test images, bootstrap interval
    [1, 1], so bootstrap se 0) and 0.5 on another CPU: one image. A floor of 0.005 failed that
    rerun; the Agresti-Coull se of 2 of 2 (0.19) allows it, and still not a class lost."""
    published = {
        "cnn_focal": {
            "images": 103,
            "accuracy": 0.767,
            "support": {"vasc": 2, "nv": 67},
            "recall": {"vasc": 1.0, "nv": 0.8806},
            "recall_ci": {"vasc": [1.0, 1.0], "nv": [0.80, 0.95]},
        }
    }
    allowed = tolerances.derive(published, {}, RULES)["cnn_focal"]
    vasc = allowed["recall.vasc"]
    assert vasc["bootstrap_se"] == 0.0 and vasc["binomial_se"] == pytest.approx((4 / 6 * 2 / 6 / 6) ** 0.5)
    assert vasc["rule"] == f"3 x binomial se {vasc['binomial_se']:.4f} (n=2)" and vasc["allowed"] > 0.5
    assert allowed["accuracy"]["binomial_se"] == pytest.approx(0.0415, abs=1e-4)  # (79 + 2) / 107 of 107
    rerun = {"cnn_focal": {**published["cnn_focal"], "recall": {"vasc": 0.5, "nv": 0.8507}}}
    assert all(row.ok for row in reproduce.compare(published, rerun, {"cnn_focal": allowed}))
    # 67 nv images all right: the binomial se is small, a drop of 0.10 is still a drift.
    constant = {"effnetb7": {"support": {"nv": 67}, "recall": {"nv": 1.0}, "recall_ci": {"nv": [1.0, 1.0]}}}
    nv = tolerances.derive(constant, {}, RULES)["effnetb7"]["recall.nv"]
    assert 0.05 < nv["allowed"] < 0.07


def test_a_retrained_model_passes_and_broken_runs_fail(test_set):
    labels, groups, model = test_set
    reference = {"cnn_focal": scored(model(2.0, 1), labels, groups)}
    allowances = tolerances.derive(reference, seed_table({"balanced_accuracy": 0.02, "melanoma_recall": 0.04}), RULES)
    # Another training run of the same recipe: same skill, other noise (another seed or CPU).
    retrained = {"cnn_focal": scored(model(2.0, 1, retrain_seed=2), labels, groups)}
    rows = reproduce.compare(reference, retrained, allowances)
    assert rows and all(row.ok for row in rows), reproduce.format_table(rows)
    # A model that predicts one class.
    one_class = {"cnn_focal": scored(np.eye(7)[np.full(len(labels), 5)], labels, groups)}
    failed = {row.metric for row in reproduce.compare(reference, one_class, allowances) if not row.ok}
    assert {"balanced_accuracy", "macro_f1", "melanoma_recall"} <= failed
    # A preprocessing change that costs the model part of its skill.
    degraded = {"cnn_focal": scored(model(1.2, 1), labels, groups)}
    rows = reproduce.compare(reference, degraded, allowances)
    assert {"balanced_accuracy", "accuracy"} <= {row.metric for row in rows if not row.ok}
    assert "DRIFT   3 x bootstrap se" in reproduce.format_table(rows)


def test_missing_model_or_metric_is_an_error():
    reference = {"cnn_focal": {"accuracy": 0.8, "balanced_accuracy": 0.7}}
    allowances = {
        "cnn_focal": {"accuracy": {"allowed": 0.03, "rule": "x"}, "balanced_accuracy": {"allowed": 0.03, "rule": "x"}}
    }
    with pytest.raises(PipelineError, match="no model 'cnn_focal'"):
        reproduce.compare(reference, {}, allowances)
    with pytest.raises(PipelineError, match="have no 'balanced_accuracy'"):
        reproduce.compare(reference, {"cnn_focal": {"accuracy": 0.8}}, allowances)
    with pytest.raises(PipelineError, match="tolerances have no model 'cnn_focal': publish again"):
        reproduce.compare(reference, reference, {})


def test_publish_writes_the_reference_and_its_allowances(tmp_path, monkeypatch, repo_root):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text((repo_root / "dvc.yaml").read_text())
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "comparison.md").write_text("# report\n")
    metrics = {"cnn_focal": {"balanced_accuracy": 0.6, "balanced_accuracy_ci": [0.56, 0.64], "accuracy": 0.7}}
    (tmp_path / "evaluate.json").write_text(json.dumps(metrics))
    seeds_file = tmp_path / "seeds.json"
    seeds_file.write_text(json.dumps({"demo": {"spread": {"cnn_focal": {"accuracy": {"std": 0.01, "n": 3}}}}}))
    rules = tmp_path / "tolerance.yaml"
    rules.write_text("factor: 2\nfloor: 0.001\ncompared: [accuracy, balanced_accuracy]\n")
    written = reproduce.publish(
        tmp_path / "evaluate.json", tmp_path / "published" / "demo.json", rules, seeds_file, None
    )
    allowances = json.loads(written.read_text())["models"]["cnn_focal"]
    assert allowances["accuracy"]["allowed"] == pytest.approx(0.02)
    assert allowances["balanced_accuracy"]["allowed"] == pytest.approx(2 * 0.08 / 3.919927969080108, abs=1e-6)
    assert json.loads((tmp_path / "published" / "demo.json").read_text()) == metrics
    assert (tmp_path / "published" / "demo_comparison.md").read_text() == "# report\n"
    # More seed runs later: the allowances are derived again from the same reference.
    seeds_file.write_text(json.dumps({"demo": {"spread": {"cnn_focal": {"accuracy": {"std": 0.02, "n": 5}}}}}))
    reproduce.write_tolerances(tmp_path / "published" / "demo.json", rules, seeds_file)
    again = json.loads(written.read_text())["models"]["cnn_focal"]["accuracy"]
    assert again["allowed"] == pytest.approx(0.04) and "(5 seeds)" in again["rule"]


def test_reference_name_and_repository_rules(repo_root):
    assert reproduce.reference_name("data/demo") == "demo"
    assert reproduce.reference_name("../shared/ham10000/") == "ham10000"
    # The data's own profile keeps the plain name; another profile has a reference of its own.
    assert reproduce.reference_name("../shared/ham10000", "cpu") == "ham10000"
    assert reproduce.reference_name("../shared/ham10000", "quick") == "ham10000_quick"
    assert reproduce.reference_name("data/demo", "demo") == "demo"
    assert reproduce.reference_name("data/demo", "cpu") == "demo_cpu"
    from pipeline.io import pipeline_path

    published = repo_root / pipeline_path("published", repo_root / "dvc.yaml")
    rules = tolerances.load_rules(published / reproduce.TOLERANCE_FILE_NAME)
    assert rules.factor > 0 and rules.compares("recall.mel") and not rules.compares("support.mel")
    for name in ("demo", "ham10000", "ham10000_quick"):
        reference = json.loads((published / f"{name}.json").read_text())
        allowances = json.loads((published / f"{name}_tolerance.json").read_text())["models"]
        assert all(row.ok for row in reproduce.compare(reference, reference, allowances))


@pytest.mark.parametrize(
    "text, message",
    [
        ("accuracy: 0.03\n", "expected exactly the keys factor, floor, compared"),
        ("factor: [1\n", "not valid YAML"),
        ("factor: high\nfloor: 0\ncompared: [accuracy]\n", "factor must be a number >= 0"),
        ("factor: 3\nfloor: -1\ncompared: [accuracy]\n", "floor must be a number >= 0"),
        ("factor: 3\nfloor: 0\ncompared: []\n", "compared must be a non-empty list"),
    ],
)
def test_a_malformed_tolerance_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "tolerance.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError, match=message):
        tolerances.load_rules(path)


def test_ci_reproduces_the_full_profile_only_where_it_fits_the_time_left():
    from pipeline.reproduction import plan

    # The fast machine the full run was measured on: 65 minutes, which fit after 30 of 100.
    assert plan.estimated_full_minutes(plan.FULL_MINUTES_GFLOPS) == pytest.approx(plan.FULL_MINUTES)
    profile, why = plan.choose(elapsed_minutes=30, gflops=plan.FULL_MINUTES_GFLOPS, budget_minutes=100)
    assert profile == "cpu" and "ham10000.json" in why
    # The same machine later in the run, or in CI's 50 minutes, or a machine 5x slower (an AVX2-only
    # AMD EPYC, 80 GFLOP/s): quick.
    assert plan.choose(elapsed_minutes=40, gflops=plan.FULL_MINUTES_GFLOPS, budget_minutes=100)[0] == "quick"
    assert plan.choose(elapsed_minutes=15, gflops=plan.FULL_MINUTES_GFLOPS, budget_minutes=50)[0] == "quick"
    profile, why = plan.choose(elapsed_minutes=30, gflops=80, budget_minutes=100)
    assert profile == "quick" and "about 330 min" in why and "ham10000_quick.json" in why
    quick = plan.estimated_minutes("quick", 80)
    assert quick == pytest.approx(plan.PROFILE_MINUTES["quick"] * plan.FULL_MINUTES_GFLOPS / 80)
    assert f"quick about {quick:.0f} min" in why and "over the budget" not in why
    # Where not even the quick one fits, it still runs (CI must reproduce something), and says so.
    profile, why = plan.choose(elapsed_minutes=45, gflops=80, budget_minutes=50)
    assert profile == "quick" and "over the budget" in why
    assert reproduce.reference_name("../shared/ham10000", profile) == "ham10000_quick"
