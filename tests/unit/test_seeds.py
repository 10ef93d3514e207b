"""The training-seed spread: queued experiments and the table made from `dvc exp show --json`."""

import math

import pytest

from pipeline.errors import PipelineError
from pipeline.reproduction import seed_queue, seeds


def _metrics(bal, acc):
    return {
        "balanced_accuracy": bal,
        "accuracy": acc,
        "macro_f1": bal,
        "melanoma_recall": bal,
        "roc_auc_macro": 0.9,
        "ece": 0.05,
        "recall": {"mel": bal, "nv": acc},
    }


def _record(name, seed, data_dir, bal, stamp, error=None):
    params = {"ingest": {"data_dir": data_dir}, "train_cnn_focal": {"seed": seed}, "train_effnet_lite0": {"seed": seed}}
    metrics = {"cnn_focal": _metrics(bal, 0.7), "effnet_lite0": _metrics(bal + 0.1, 0.8)}
    return {
        "rev": f"rev-{name}",
        "name": name,
        "error": error,
        "data": {
            "timestamp": stamp,
            "params": {"params.yaml": {"data": params}},
            "metrics": {"metrics/evaluate.json": {"data": metrics}},
        },
    }


SHOW = [
    {"rev": "workspace", "name": None, "data": {"params": {}, "metrics": {}}, "experiments": None},
    {
        "rev": "abc",
        "name": "main",
        "data": {  # a baseline's committed metrics are not a seed run
            "params": {
                "params.yaml": {
                    "data": {
                        "ingest": {"data_dir": "/x/ham10000"},
                        "train_cnn_focal": {"seed": 1},
                        "train_effnet_lite0": {"seed": 1},
                    }
                }
            },
            "metrics": {
                "metrics/evaluate.json": {"data": {"cnn_focal": _metrics(0.1, 0.1), "effnet_lite0": _metrics(0.1, 0.1)}}
            },
        },
        "experiments": [
            {"revs": [_record("a", 42, "/x/ham10000", 0.60, "2026-12-01T10:00:00")]},
            {"revs": [_record("b", 43, "/x/ham10000", 0.62, "2026-12-01T11:00:00")]},
            {"revs": [_record("c", 44, "/x/ham10000", 0.64, "2026-12-01T12:00:00")], "executor": {"state": "success"}},
            {"revs": [_record("a-old", 42, "/x/ham10000", 0.50, "2026-11-01T10:00:00")]},  # the same seed, older
            {"revs": [_record("d", 45, "data/demo", 0.9, "2026-12-01T12:00:00")]},  # another data set
            {"revs": [_record("e", 46, "/x/ham10000", 0.9, "2026-12-01T12:00:00", error={"msg": "failed"})]},
            # still running: it shows the baseline's committed metrics
            {"revs": [_record("f", 47, "/x/ham10000", 0.9, "2026-12-01T13:00:00")], "executor": {"state": "running"}},
            {"revs": [_record("g", 48, "/x/ham10000", 0.9, "2026-12-01T13:00:00")], "executor": {"state": "queued"}},
        ],
    },
]


def test_seed_runs_are_the_finished_experiments_of_that_data_set_newest_per_seed():
    runs = seeds.seed_runs(SHOW, "ham10000", "metrics/evaluate.json", ["cnn_focal", "effnet_lite0"])
    assert [run.name for run in runs] == ["a", "b", "c"]
    assert [run.seeds["cnn_focal"] for run in runs] == [42, 43, 44]


def test_seed_runs_of_another_profile_join_only_their_own_table():
    # Seed runs of the quick profile (5 CNN epochs) and of the CPU profile (30) on the same data:
    # each profile's table takes only its own runs, the data folder and training seeds aside.
    quick = _record("q", 42, "/x/ham10000", 0.40, "2026-12-02T10:00:00")
    quick["data"]["params"]["params.yaml"]["data"]["train_cnn_focal"]["epochs"] = 5
    show = [
        {
            "rev": "abc",
            "name": "main",
            "data": {},
            "experiments": [
                {"revs": [quick]},
                {"revs": [_record("c", 43, "/x/ham10000", 0.60, "2026-12-01T10:00:00")]},
            ],
        }
    ]
    for run in show[0]["experiments"][1:]:
        run["revs"][0]["data"]["params"]["params.yaml"]["data"]["train_cnn_focal"]["epochs"] = 30
    approaches = ["cnn_focal", "effnet_lite0"]
    profile = {"ingest": {"data_dir": "data/demo"}, "train_cnn_focal": {"seed": 42, "epochs": 5}}
    assert [run.name for run in seeds.seed_runs(show, "ham10000", "metrics/evaluate.json", approaches, profile)] == [
        "q"
    ]
    profile["train_cnn_focal"]["epochs"] = 30
    assert [run.name for run in seeds.seed_runs(show, "ham10000", "metrics/evaluate.json", approaches, profile)] == [
        "c"
    ]
    assert len(seeds.seed_runs(show, "ham10000", "metrics/evaluate.json", approaches)) == 2


def test_spread_is_the_mean_and_sample_standard_deviation():
    runs = seeds.seed_runs(SHOW, "ham10000", "metrics/evaluate.json", ["cnn_focal", "effnet_lite0"])
    table = seeds.spread(runs, ["cnn_focal", "effnet_lite0"])
    row = table["cnn_focal"]["balanced_accuracy"]
    assert row["mean"] == pytest.approx(0.62) and row["std"] == pytest.approx(0.02) and row["n"] == 3
    assert (row["min"], row["max"]) == (0.60, 0.64)
    assert table["effnet_lite0"]["recall.mel"]["mean"] == pytest.approx(0.72)
    assert table["cnn_focal"]["accuracy"]["std"] == 0.0


def test_markdown_table_shows_mean_and_sd_per_approach():
    runs = seeds.seed_runs(SHOW, "ham10000", "metrics/evaluate.json", ["cnn_focal", "effnet_lite0"])
    entry = {
        "spread": seeds.spread(runs, ["cnn_focal", "effnet_lite0"]),
        "runs": [
            {
                "name": r.name,
                "seeds": r.seeds,
                "balanced_accuracy": {a: r.metrics[a]["balanced_accuracy"] for a in r.seeds},
            }
            for r in runs
        ],
    }
    text = seeds.seeds_markdown({"ham10000": entry})
    assert "## ham10000: 3 seeds" in text
    assert "| balanced_accuracy | 0.620 ± 0.020 [0.600, 0.640] | 0.720 ± 0.020 [0.700, 0.740] |" in text
    assert "| c | 44 | 44 | 0.6400 | 0.7400 |" in text


def test_queue_commands_set_each_approach_seed_and_the_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "demo").mkdir(parents=True)
    commands = seed_queue.queue_commands("data/demo", [42, 43], ["cnn_focal", "effnet_lite0"], "demo")
    assert commands[1] == [
        "dvc",
        "exp",
        "run",
        "--queue",
        "--set-param",
        "profile=demo",
        "--set-param",
        "ingest.data_dir=data/demo",
        "--set-param",
        "train_cnn_focal.seed=43",
        "--set-param",
        "train_effnet_lite0.seed=43",
    ]
    outside = seed_queue.queue_commands(str(tmp_path.parent / "ham10000"), [1], ["cnn_focal"], "cpu")[0]
    assert f"ingest.data_dir={tmp_path.parent / 'ham10000'}" in outside  # absolute: exps run in a temp copy
    with pytest.raises(PipelineError, match="seeds must differ"):
        seed_queue.queue_commands("data/demo", [1, 1], ["cnn_focal"], "demo")
    with pytest.raises(PipelineError, match="no training seed for approach 'effnetb7'"):
        seed_queue.queue_commands("data/demo", [1], ["effnetb7"], "demo")


def test_one_seed_has_no_spread():
    runs = seeds.seed_runs(SHOW, "ham10000", "metrics/evaluate.json", ["cnn_focal", "effnet_lite0"])[:1]
    assert math.isnan(seeds.spread(runs, ["cnn_focal"])["cnn_focal"]["balanced_accuracy"]["std"])


def test_queue_states_follow_only_the_named_experiments():
    status = """Task     Name        Created    Status
9e4da72  oleic-boat  11:04 PM   Running
dfa7a3b  gaunt-moit  11:04 PM   Queued
0000000  old-one     10:00 AM   Failed
"""
    assert seed_queue.queue_states(status, ["oleic-boat", "gaunt-moit"]) == {
        "oleic-boat": "Running",
        "gaunt-moit": "Queued",
    }


def test_runs_recorded_by_an_earlier_report_are_kept_when_their_experiments_are_gone():
    runs = seeds.seed_runs(SHOW, "ham10000", "metrics/evaluate.json", ["cnn_focal", "effnet_lite0"])
    recorded = [
        {
            "name": "old",
            "seeds": {"cnn_focal": 41, "effnet_lite0": 41},
            "data_dir": "/x/ham10000",
            "metrics": {"cnn_focal": _metrics(0.58, 0.7), "effnet_lite0": _metrics(0.68, 0.8)},
        },
        {
            "name": "a-again",
            "seeds": {"cnn_focal": 42, "effnet_lite0": 42},
            "data_dir": "/x/ham10000",
            "metrics": {"cnn_focal": _metrics(0.1, 0.1), "effnet_lite0": _metrics(0.1, 0.1)},
        },  # exp show wins
        {"name": "no-metrics", "seeds": {"cnn_focal": 40, "effnet_lite0": 40}},
    ]
    merged = seeds.merge_recorded(runs, recorded, ["cnn_focal", "effnet_lite0"])
    assert [run.name for run in merged] == ["old", "a", "b", "c"]
