"""apt-plugin-hpo: search spaces, real training trials with pruning, parallel workers on a journal
storage, the study continued, the best pipeline written, and DDP trials (rank 0 samples)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from apt_plugin_hpo import HyperparameterSearcher, parse_space
from apt_plugin_lm.testing import TINY_PIPELINE
from apt_sdk import UserError
from apt_sdk.testing import cli

SEARCH = """
[tool.hpo]
trial_overrides = { "trainer.max_steps" = 12, "trainer.eval_every" = 3 }

[tool.hpo.space]
"trainer.learning_rate" = { range = [1e-5, 3e-2] }
"model.d_ff" = [32, 64]
"""


@pytest.fixture
def search_pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "search.toml"
    path.write_text(TINY_PIPELINE.format(out=(tmp_path / "run").as_posix()) + SEARCH)
    return path


def test_search_space_tuples_are_ranges_and_lists_are_choices():
    space = parse_space({"lr": (1e-4, 1e-2), "layers": (1, 4), "act": ["gelu", "relu"],
                         "drop": {"range": [0.0, 0.3]}, "wd": {"range": [0.01, 0.1], "log": False},
                         "bs": {"choices": [8, 16]}})
    assert space["lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["layers"] == IntDistribution(1, 4)
    assert space["act"] == CategoricalDistribution(["gelu", "relu"])
    assert space["drop"] == FloatDistribution(0.0, 0.3, log=False)  # low 0 cannot be log-uniform
    assert space["wd"] == FloatDistribution(0.01, 0.1, log=False)
    assert space["bs"] == CategoricalDistribution([8, 16])


@pytest.mark.parametrize("spec, words", [
    ((1.0, 0.5), "below high"), ((1, 2, 3), "two numbers"), ([], "empty"), ("fast", "expected a"),
    ({"range": [0.0, 1.0], "log": True}, "low > 0"), ({"range": [1, 2], "choices": [1]}, "use {"),
])
def test_a_bad_search_space_entry_is_named(spec, words):
    with pytest.raises(UserError, match=rf"trainer\.lr.*{re.escape(words)}"):
        parse_space({"trainer.lr": spec})


def test_objective_search_finds_the_minimum_and_draws_the_plots(tmp_path):
    searcher = HyperparameterSearcher({"x": (-3.0, 3.0), "k": [1, 2]}, n_trials=30, storage=None,
                                      objective=lambda p, trial: (p["x"] - 1.0) ** 2 + p["k"],
                                      output_dir=tmp_path, sampler=optuna.samplers.TPESampler(seed=0),
                                      log=lambda m: None)
    study = searcher.optimize()
    best = searcher.get_best_params(study)
    assert abs(best["x"] - 1.0) < 0.5 and best["k"] == 1
    assert (tmp_path / "study.db").exists()  # SQLite by default
    plots = searcher.visualize_results(study, tmp_path / "plots")
    assert [p.name for p in plots] == ["optimization_history.png", "param_importances.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)


def test_an_unknown_pipeline_key_fails_before_any_trial(search_pipeline):
    with pytest.raises(UserError, match="learning_rat"):
        HyperparameterSearcher({"trainer.learning_rat": (1e-4, 1e-2)}, pipeline=search_pipeline)


def test_trials_train_for_real_and_a_pruned_trial_stops_early(search_pipeline, tmp_path):
    """The value is the run's own validation loss; a pruner that prunes everything stops the run at the
    first validation (step 3 of 12)."""
    searcher = HyperparameterSearcher({"trainer.learning_rate": (1e-4, 1e-2)}, n_trials=1, pipeline=search_pipeline,
                                      trial_overrides=["trainer.max_steps=12", "trainer.eval_every=3"],
                                      log=lambda m: None)
    study = searcher.optimize(enqueue_defaults=True)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.params == {"trainer.learning_rate": 1e-3}
    assert sorted(trial.intermediate_values) == [3, 6, 9, 12]
    assert trial.value == trial.intermediate_values[12] and 2.0 < trial.value < 5.0
    import torch

    trial_dir = searcher.output_dir / searcher.study_name / "trial_000"
    checkpoints = sorted((trial_dir / "checkpoints").glob("*.pt"), key=lambda p: int(p.stem.rsplit("step", 1)[1]))
    assert [int(p.stem.rsplit("step", 1)[1]) for p in checkpoints] == [3, 6, 9, 12]  # one per validation
    assert torch.load(checkpoints[-1], weights_only=False)["global_step"] == 12

    pruning = HyperparameterSearcher({"trainer.learning_rate": (1e-4, 1e-2)}, n_trials=1, pipeline=search_pipeline,
                                     trial_overrides=["trainer.max_steps=12", "trainer.eval_every=3"],
                                     study_name="pruned", pruner=optuna.pruners.ThresholdPruner(upper=0.0),
                                     log=lambda m: None)
    trial = pruning.optimize().trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert sorted(trial.intermediate_values) == [3]


@pytest.mark.slow
@pytest.mark.slow_tier  # torchrun or two processes: the slow tier (pytest --slow-tier)
def test_two_workers_share_a_journal_study_which_a_second_run_continues(search_pipeline, tmp_path):
    result = cli("hpo", str(search_pipeline), "--trials", "8", "--workers", "2", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "locked" not in result.stdout + result.stderr
    assert "worker" in result.stdout  # the second process really ran trials
    journal = tmp_path / "run" / "hpo" / "study.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="tiny-hpo", storage=storage)
    states = [t.state for t in study.trials]
    assert len(states) == 8 and set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert len({t.number for t in study.trials}) == 8

    again = cli("hpo", str(search_pipeline), "--trials", "2", "--storage", f"journal:{journal}", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(optuna.load_study(study_name="tiny-hpo", storage=storage).trials) == 10  # load_if_exists

    best_file = tmp_path / "run" / "hpo" / "best_pipeline.toml"
    best = tomllib.loads(best_file.read_text())
    assert best["trainer"]["learning_rate"] == pytest.approx(study.best_params["trainer.learning_rate"])
    assert best["trainer"]["max_steps"] == 4  # the pipeline's own budget, not the trials'
    assert "defaults (trial 0)" in result.stdout and "best (trial" in result.stdout
    assert cli("validate", str(best_file)).returncode == 0
    assert (tmp_path / "run" / "hpo" / "optimization_history.png").exists()


@pytest.mark.slow_tier  # two processes: the slow tier (pytest --slow-tier)
def test_two_workers_share_a_study_on_a_postgresql_server(search_pipeline, tmp_path):
    """The storage for parallel workers on several machines: an RDB server (.ci/run starts a PostgreSQL)."""
    server = os.environ.get("APT_TEST_POSTGRES_URL")
    if not server:
        pytest.skip("no PostgreSQL server: APT_TEST_POSTGRES_URL is unset (.ci/run starts one and sets it)")
    import psycopg  # the marketplace's [postgresql] extra brings the driver; this plugin takes any Optuna URL

    database = f"apt_hpo_{os.getpid()}"
    with psycopg.connect(server.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
        conn.execute(f'CREATE DATABASE "{database}"')
    url = server.rsplit("/", 1)[0] + f"/{database}"
    result = cli("hpo", str(search_pipeline), "--trials", "4", "--workers", "2", "--storage", url, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "worker" in result.stdout  # the second process really ran trials
    again = cli("hpo", str(search_pipeline), "--trials", "1", "--storage", url, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    study = optuna.load_study(study_name="tiny-hpo", storage=url)
    assert len({t.number for t in study.trials}) == 5  # both workers' and the continued run's, in one study
    assert {t.state for t in study.trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}


def test_hpo_command_errors_exit_2(search_pipeline, tmp_path):
    plain = tmp_path / "plain.toml"
    plain.write_text(TINY_PIPELINE.format(out=(tmp_path / "p").as_posix()))
    result = cli("hpo", str(plain), "--trials", "1")
    assert result.returncode == 2 and "no search space" in result.stderr
    result = cli("hpo", str(search_pipeline), "--workers", "2", "--storage", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 2 and "SQLite cannot take parallel workers" in result.stderr
    bad = tmp_path / "bad_space.toml"
    bad.write_text('"trainer.learning_rate" = { range = [0.1, 0.01] }\n')
    result = cli("hpo", str(search_pipeline), "--space", str(bad))
    assert result.returncode == 2 and "trainer.learning_rate: range low 0.1 must be below high 0.01" in result.stderr
    # a misspelt [tool.hpo] key was ignored (every trial then ran without it), and a misspelt metric failed every
    # trial with "ValueError: val_los is None", exit 1
    typo = tmp_path / "typo.toml"
    typo.write_text(search_pipeline.read_text().replace("trial_overrides =", "trial_override ="))
    result = cli("hpo", str(typo), "--trials", "1")
    assert result.returncode == 2 and "[tool.hpo] trial_override: unknown key (did you mean 'trial_overrides'?)" \
        in result.stderr
    typo.write_text(search_pipeline.read_text().replace("[tool.hpo]\n", '[tool.hpo]\nmetric = "val_los"\n'))
    result = cli("hpo", str(typo), "--trials", "3", timeout=300)
    assert result.returncode == 2 and "[tool.hpo] metric 'val_los': the trainer's result has no such key; its " \
        "numbers are best_val_loss" in result.stderr, result.stderr
    assert result.stdout.count("trial ") <= 1  # stopped at the first trial, not after all three
    # a storage that cannot be opened was a SQLAlchemy traceback and exit 1 (and showed the password)
    for storage, words in (("postgresql://me:secret@127.0.0.1:1/db", "OperationalError"),
                           ("mysq://host/db", "NoSuchModuleError"),
                           (f"journal:{tmp_path / 'plain.toml' / 'j.log'}", "FileExistsError")):
        result = cli("hpo", str(search_pipeline), "--trials", "1", "--storage", storage)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "cannot open this Optuna storage: " + words in result.stderr and "secret" not in result.stderr


def torchrun_hpo(pipeline, *extra):
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
            "-m", "apt_kernel.cli", "hpo", str(pipeline), "--trials", "2", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
@pytest.mark.slow_tier  # torchrun or two processes: the slow tier (pytest --slow-tier)
def test_under_ddp_rank_0_samples_and_every_rank_trains_the_same_params(search_pipeline, tmp_path):
    result = torchrun_hpo(search_pipeline)
    assert result.returncode == 0, result.stdout + result.stderr
    rank0 = re.findall(r"^trial (\d+): \S+ [\d.]+ (\{.*\})$", result.stdout, re.M)
    rank1 = re.findall(r"^\[rank 1\] trial (\d+): \S+ [\d.]+ (\{.*\})$", result.stdout, re.M)
    assert len(rank0) == 2 and rank0 == rank1, result.stdout
    losses = [float(v) for v in re.findall(r"^trial \d+: val_loss ([\d.]+)", result.stdout, re.M)]
    assert all(math.isfinite(v) for v in losses)


@pytest.mark.slow
@pytest.mark.slow_tier  # torchrun or two processes: the slow tier (pytest --slow-tier)
def test_under_ddp_a_pruned_trial_stops_every_rank_at_the_same_step(search_pipeline, tmp_path):
    """prune_above = 0: rank 0's pruner stops the trial at its first validation (step 3 of 12); if rank 1
    went on alone, DDP would hang and torchrun time out."""
    text = search_pipeline.read_text().replace("[tool.hpo]\n", "[tool.hpo]\nprune_above = 0.0\n")
    search_pipeline.write_text(text)
    result = torchrun_hpo(search_pipeline)
    assert "no trial completed" in result.stderr, result.stdout + result.stderr  # both pruned: nothing to report
    assert len(re.findall(r"^trial \d+: pruned", result.stdout, re.M)) == 2
    assert len(re.findall(r"^\[rank 1\] trial \d+: pruned", result.stdout, re.M)) == 2
    import torch

    for trial in ("trial_000", "trial_001"):
        checkpoints = tmp_path / "run" / "hpo" / "tiny-hpo" / trial / "checkpoints"
        saved = torch.load(next(checkpoints.glob("*.pt")), weights_only=False)
        assert saved["global_step"] == 3
