"""The trainer's DDP and FSDP on torchrun with gloo on CPU: the same training as one process, bit-identical
ranks, two nodes through c10d rendezvous on 127.0.0.1, and early stopping / SIGTERM reaching every rank. (A
failing rank's error in the error log is tests/test_distributed_failures.py's: it crosses into the errors
plugin.)"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.slow_tier]
PLUGINS = str(Path(__file__).resolve().parent / "plugins")
PIPELINE = """
[pipeline]
name = "ddp"
seed = 2

[data]
use = "text"
corpus = "python-stdlib-docs"
max_chars = 8000
block_size = 16
batch_size = 4

[model]
use = "apt-lm"
d_model = 32
num_heads = 2
num_layers = 1
d_ff = 64

[loss]
use = "lm-cross-entropy"

[trainer]
use = "apt-trainer"
max_steps = 20
log_every = 0
export = false
eval_batches = 4
"""


def launch(tmp_path, name, *extra, callbacks="", pipeline=PIPELINE):
    path = tmp_path / f"{name}.toml"
    path.write_text(pipeline + callbacks)
    args = [sys.executable, "-m", "apt_kernel.cli", "run", str(path), "--no-progress", "--plugins-dir", PLUGINS,
            "--set", f"pipeline.output_dir={str(tmp_path / name)!r}", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def done(proc, timeout=60):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("training hung") from None
    return proc.returncode, out + err


def params(tmp_path, name, step=20):
    path = next((tmp_path / name / "checkpoints").glob(f"*_step{step}.pt"))
    return torch.load(path, weights_only=True)["model_state_dict"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_check(tmp_path, name):
    return f'\n[[callbacks]]\nuse = "rank-check"\nlog = "{tmp_path / name}.ranks"\n'


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    code, output = done(launch(tmp, "one", "--set", "data.batch_size=8"))
    assert code == 0, output
    return params(tmp, "one")


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, single):
    code, output = done(launch(tmp_path, "two", "--nproc-per-node", "2", callbacks=rank_check(tmp_path, "two")))
    assert code == 0, output
    assert "processes        2" in output
    for name, value in params(tmp_path, "two").items():
        torch.testing.assert_close(value, single[name], atol=1e-6, rtol=0, msg=name)
    lines = Path(f"{tmp_path / 'two'}.ranks").read_text().split("\n")[:-1]
    assert lines == [f"{step} 2 same" for step in range(1, 21)]  # every rank identical after every step


def test_two_nodes_rendezvous_on_localhost(tmp_path, single):
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [launch(tmp_path, "nodes", "--nproc-per-node", "1", "--nnodes", "2", "--rdzv-endpoint", endpoint,
                    "--rdzv-id", "test-two-nodes") for _ in range(2)]
    results = [done(node, timeout=120) for node in nodes]
    assert all(code == 0 for code, _ in results), results
    assert any("processes        2" in output for _, output in results)
    for name, value in params(tmp_path, "nodes").items():
        torch.testing.assert_close(value, single[name], atol=1e-6, rtol=0, msg=name)


def test_early_stopping_stops_every_rank_at_the_same_step(tmp_path):
    stopping = '\n[[callbacks]]\nuse = "early-stopping"\npatience = 1\nmin_delta = 100.0\n'
    code, output = done(launch(tmp_path, "es", "--nproc-per-node", "2", "--set", "trainer.eval_every=5",
                               "--set", "trainer.max_steps=40", callbacks=stopping + rank_check(tmp_path, "es")))
    assert code == 0, output
    assert "early stopping at step 10" in output
    assert Path(f"{tmp_path / 'es'}.ranks").read_text().split("\n")[-2] == "10 2 same"
    assert list((tmp_path / "es" / "checkpoints").glob("*_step10.pt"))


def test_sigterm_stops_every_rank_after_the_step_without_hanging(tmp_path):
    marker = str(tmp_path / "sig")
    probe = (f'\n[[callbacks]]\nuse = "probe"\nlog = "{marker}.log"\nfreeze_after_step = 5\n'
             f'ready_file = "{marker}.ready"\ngo_file = "{marker}.go"\n')
    proc = launch(tmp_path, "sig", "--nproc-per-node", "2", callbacks=probe)
    deadline = time.time() + 60
    while not Path(f"{marker}.ready").exists():
        assert proc.poll() is None and time.time() < deadline, done(proc)[1]
        time.sleep(0.05)
    started = time.time()
    os.kill(proc.pid, signal.SIGTERM)  # the launcher became torchrun, which forwards it to every worker
    time.sleep(0.5)
    Path(f"{marker}.go").write_text("")
    code, output = done(proc)
    assert time.time() - started < 60
    assert code != 0 and "interrupted by SIGTERM at step 6" in output
    assert (tmp_path / "sig" / "temp" / "apt_temp_step6.pt").exists()


PADDED = """
[pipeline]
name = "padded"

[data]
use = "padded-sequences"

[model]
use = "apt-lm"
d_model = 32
num_heads = 2
num_layers = 1
d_ff = 64

[loss]
use = "lm-cross-entropy"

[trainer]
use = "apt-trainer"
learning_rate = 1e-2
warmup_steps = 0
log_every = 0
export = false
"""


def test_token_count_is_global_across_ranks(tmp_path):
    """Ranks get different numbers of real tokens; normalising by each rank's own count would differ."""
    runs = {}
    for name, extra in (("one", ["--set", "data.batch_size=8"]),
                        ("two", ["--set", "data.batch_size=4", "--nproc-per-node", "2"])):
        code, output = done(launch(tmp_path, name, *extra, pipeline=PADDED))
        assert code == 0, output
        runs[name] = torch.load(next((tmp_path / name / "checkpoints").glob("*.pt")), weights_only=True)
    one, two = runs["one"], runs["two"]
    assert len(one["loss_history"]) == len(two["loss_history"]) == 5
    assert max(abs(a - b) for a, b in zip(one["loss_history"], two["loss_history"], strict=True)) < 1e-6
    for name, value in one["model_state_dict"].items():
        torch.testing.assert_close(two["model_state_dict"][name], value, atol=1e-6, rtol=0, msg=name)


def test_fsdp_shards_trains_like_one_process_and_resumes(tmp_path, single):
    from apt_plugin_lm.model import APTConfig, APTLargeModel
    from apt_plugin_trainer import CheckpointManager
    from apt_plugin_trainer.optim import param_groups

    fsdp = ("--nproc-per-node", "2", "--set", "trainer.strategy='fsdp'")
    code, output = done(launch(tmp_path, "fsdp", *fsdp, "--set", "trainer.export=true"))
    assert code == 0, output
    for name, value in params(tmp_path, "fsdp").items():
        torch.testing.assert_close(value, single[name], atol=1e-5, rtol=0, msg=name)
    assert (tmp_path / "fsdp" / "model" / "model.safetensors").exists()
    # the gathered checkpoint is a plain one: it loads in a single process, optimizer included
    state = torch.load(next((tmp_path / "fsdp" / "checkpoints").glob("*.pt")), weights_only=True)
    model = APTLargeModel(APTConfig.from_dict(state["config"]))
    optimizer = torch.optim.AdamW(param_groups(model, 0.1))
    assert CheckpointManager(tmp_path / "fsdp").load_checkpoint(model, optimizer, latest=True)[1] == 20
    assert optimizer.state_dict()["state"]
    shutil.copytree(tmp_path / "fsdp", tmp_path / "fsdp_then_one")
    more = ("--resume", "latest", "--set", "trainer.max_steps=25", "--set", "trainer.epochs=2")
    code, output = done(launch(tmp_path, "fsdp", *fsdp, *more))
    assert code == 0, output
    # the same checkpoint resumed in one process (its restore is tested exactly elsewhere): the sharded
    # resume must have restored the same weights, moments, schedule and data position to match it
    code, output = done(launch(tmp_path, "fsdp_then_one", "--set", "data.batch_size=8", *more))
    assert code == 0, output
    one = params(tmp_path, "fsdp_then_one", step=25)
    for name, value in params(tmp_path, "fsdp", step=25).items():
        torch.testing.assert_close(value, one[name], atol=1e-5, rtol=0, msg=name)


def test_fsdp_outside_torchrun_is_a_clear_error(tmp_path):
    code, output = done(launch(tmp_path, "nofsdp", "--set", "trainer.strategy='fsdp'"))
    assert code == 2 and "strategy = \"fsdp\" runs under torchrun" in output


def test_fsdp_with_a_model_that_cannot_be_rebuilt_is_refused_before_training(tmp_path):
    """model/ of an FSDP run is written from a model rebuilt through the Model protocol's from_config: a model
    without it is refused before the first step, not after the whole run."""
    code, output = done(launch(tmp_path, "opaque", "--nproc-per-node", "2", "--set", "trainer.strategy='fsdp'",
                               "--set", "model.use='opaque-lm'", "--set", "trainer.export='last'"))
    assert code != 0, output  # each rank exits 2 with the error; torchrun then 1
    assert "[trainer] strategy (from --set trainer.strategy='fsdp'): \"fsdp\" writes model/ from a model rebuilt " \
           "from its config, and OpaqueLM has no config and from_config(config)" in output, output
    assert "set export = false" in output and not (tmp_path / "opaque").exists()  # refused as it was built


def test_a_worker_writing_into_the_run_folder_before_rank_0_looks_is_not_another_run(tmp_path):
    """The launcher records what the folder held before the workers started; a file another rank's component
    opens there first (an error log's database) is this run's, not an old run's."""
    code, output = done(launch(tmp_path, "early", "--nproc-per-node", "2", "--set", "trainer.max_steps=2",
                               callbacks='\n[[callbacks]]\nuse = "early-writer"\n'))
    assert code == 0, output
    assert (tmp_path / "early" / "rank1.log").exists()
    code, output = done(launch(tmp_path, "early", "--nproc-per-node", "2", "--set", "trainer.max_steps=2"))
    assert code == 2 and "already holds a run" in output, output  # and a folder with a run is still refused
