"""Every bad input: one clear message naming file, table/key and line; exit 2; no traceback; nothing written."""

import pytest

from conftest import TINY_PIPELINE, cli, make_plugin, with_site


def run_bad(tmp_path, text, *extra, env_extra=None):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = cli("run", str(path), *extra, env_extra=env_extra)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists(), "output written before validation passed"
    return result.stderr


@pytest.fixture
def good(tmp_path):
    return TINY_PIPELINE.format(out=(tmp_path / "run").as_posix())


def test_toml_syntax_error(tmp_path, good):
    err = run_bad(tmp_path, good.replace('use = "apt-lm"', 'use = "apt-lm'))
    assert "bad.toml" in err and "TOML syntax error" in err and "line 15" in err


def test_unknown_table(tmp_path, good):
    err = run_bad(tmp_path, good + "\n[trainr]\nepochs = 1\n")
    assert "bad.toml: line 30: unknown table [trainr] (did you mean [trainer]?)" in err


def test_unknown_key_in_pipeline_table(tmp_path, good):
    err = run_bad(tmp_path, good.replace('seed = 3', 'seed = 3\nsede = 4'))
    assert "bad.toml: line 5: [pipeline] sede: unknown key (did you mean 'seed'?)" in err


def test_unknown_component_option_suggests(tmp_path, good):
    err = run_bad(tmp_path, good.replace("d_model = 32", "d_modle = 32"))
    assert "line 16: [model] d_modle: unknown option for model 'apt-lm' (did you mean 'd_model'?)" in err


def test_another_trainers_name_for_an_option_suggests_ours(tmp_path, good):
    # HF Trainer's and Lightning's names were matched by spelling only: grad_accum_steps suggested 'warmup_steps'
    for theirs, ours in (("gradient_accumulation_steps", "accumulate_grad_batches"),
                         ("grad_accum_steps", "accumulate_grad_batches"), ("max_grad_norm", "grad_clip"),
                         ("num_train_epochs", "epochs"), ("lr", "learning_rate")):
        err = run_bad(tmp_path, good.replace("max_steps = 4", f"max_steps = 4\n{theirs} = 2"))
        assert f"[trainer] {theirs}: unknown option for trainer 'apt-trainer' (did you mean '{ours}'?)" in err


def test_wrong_type(tmp_path, good):
    err = run_bad(tmp_path, good.replace("d_model = 32", 'd_model = "wide"'))
    assert "line 16: [model] d_model: input should be a valid integer (got 'wide')" in err.lower()
    err = run_bad(tmp_path, good.replace("seed = 3", "seed = 3.5"))
    assert "line 4: [pipeline] seed: input should be a valid integer (got 3.5)" in err


def test_out_of_range_and_choices(tmp_path, good):
    err = run_bad(tmp_path, good.replace("num_layers = 1", "num_layers = 0"))
    assert "[model] num_layers: Input should be greater than or equal to 1" in err
    err = run_bad(tmp_path, good.replace("num_layers = 1", 'num_layers = 1\nattention = "flash"'))
    assert "[model] attention:" in err and "'autopoietic' or 'sdpa'" in err


def test_unknown_component_suggests_closest(tmp_path, good):
    err = run_bad(tmp_path, good.replace('use = "apt-lm"', 'use = "apt-lm2"'))
    assert "line 15: [model] use: unknown model 'apt-lm2' (did you mean 'apt-lm'?)" in err


def test_missing_table(tmp_path, good):
    err = run_bad(tmp_path, good.replace("[loss]\nuse = \"lm-cross-entropy\"\n", ""))
    assert "bad.toml: missing table [loss]" in err


def test_missing_data_file(tmp_path, good):
    text = good.replace('corpus = "python-stdlib-docs"', 'path = "no/such/file.txt"')
    err = run_bad(tmp_path, text)
    assert "[data] path: file or folder not found: no/such/file.txt" in err and "line 9" in err


def test_bad_override_names_the_override(tmp_path, good):
    err = run_bad(tmp_path, good, "--set", "trainer.max_steps=lots")
    assert "[trainer] max_steps (from --set trainer.max_steps=lots)" in err
    err = run_bad(tmp_path, good, "--set", "nonsense")
    assert "--set 'nonsense': expected KEY=VALUE" in err
    err = run_bad(tmp_path, good + '[[callbacks]]\nuse = "text-samples"\n', "--set", "callbacks.3.prompt=x")
    assert "--set callbacks.3.prompt=x: '3' is not an index of the 1 entries there" in err
    err = run_bad(tmp_path, good + '[[callbacks]]\nuse = "text-samples"\n', "--set", "callbacks.0.promt=x")
    assert "[callbacks[0]] promt (from --set callbacks.0.promt=x): unknown option for callback" in err


def test_missing_pipeline_file(tmp_path):
    result = cli("run", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "nope.toml: pipeline file not found" in result.stderr


def test_data_error_from_component_is_a_user_error(tmp_path, good):
    both = good.replace('corpus = "python-stdlib-docs"', 'corpus = "python-stdlib-docs"\ntexts = ["a"]')
    err = run_bad(tmp_path, both)
    assert "[data] corpus: give exactly one of path, texts or corpus (got texts, corpus)" in err
    assert "line " in err  # a component's option error points at the pipeline's line like the rest


def incompatible_site(tmp_path):
    site = tmp_path / "site"
    make_plugin(site, "apt-plugin-future", "raise SystemExit('must never be imported')\n", """
kernel_api = "^3"
[provides.callback.future-cb]
summary = "needs a newer kernel"
""", version="2.1.0")
    return site


def test_incompatible_plugin_gives_the_explained_chain(tmp_path, good):
    site = incompatible_site(tmp_path)
    err = run_bad(tmp_path, good + '\n[[callbacks]]\nuse = "future-cb"\n', env_extra=with_site(site))
    assert ("pipeline needs apt-plugin-future; apt-plugin-future 2.1.0 requires apt-kernel-api ^3; "
            "installed kernel API is 1.0.0 → cannot run") in err


def test_pipeline_version_requirement_conflict(tmp_path, good):
    text = good.replace('output_dir', 'requires = { apt-plugin-lm = ">=2" }\noutput_dir')
    err = run_bad(tmp_path, text)
    assert "pipeline needs apt-plugin-lm >=2; installed apt-plugin-lm: 0.1.0 → cannot run" in err


def test_two_plugins_providing_one_model(tmp_path, good):
    site = tmp_path / "site"
    make_plugin(site, "apt-plugin-copycat", "", """
kernel_api = "^1.0"
[provides.model.apt-lm]
summary = "the same name as the builtin"
""")
    err = run_bad(tmp_path, good, env_extra=with_site(site))
    assert "model 'apt-lm' is provided by two plugins:" in err
    assert "apt-plugin-copycat" in err and "apt-plugin-lm" in err


def test_validate_accepts_a_good_pipeline_without_writing(tmp_path, good):
    path = tmp_path / "ok.toml"
    path.write_text(good)
    result = cli("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout and "model 'apt-lm' from apt-plugin-lm 0.1.0" in result.stdout
    assert not (tmp_path / "run").exists()


def test_output_dir_that_is_a_file(tmp_path, good):
    (tmp_path / "run").write_text("not a folder")
    path = tmp_path / "bad.toml"
    path.write_text(good)
    result = cli("run", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "[pipeline] output_dir: " in result.stderr and "is a file: choose a folder" in result.stderr


# -- inputs a hostile user tried (issue 10): one line, exit 2, nothing written ------------------------
def test_a_typo_in_limits_require_names_the_known_layers(tmp_path, good):
    text = good + '\n[[callbacks]]\nuse = "early-stopping"\nlimits = { require = ["landlok"] }\n'
    err = run_bad(tmp_path, text)
    assert "[callbacks[0]] limits.require: unknown sandbox layer 'landlok' (did you mean 'landlock'?)" in err
    assert "layers: rlimits, no_new_privs, capabilities, namespaces, landlock, seccomp" in err


def test_a_misspelt_sandbox_key_suggests_the_kernel_key(tmp_path, good):
    # `sandobx = true` was refused as "unknown option for callback", with no word of the key meant
    err = run_bad(tmp_path, good + '\n[[callbacks]]\nuse = "early-stopping"\nsandobx = true\n')
    assert "[callbacks[0]] sandobx: unknown option for callback 'early-stopping' (did you mean 'sandbox'?)" in err
    err = run_bad(tmp_path, good + '\n[[callbacks]]\nuse = "early-stopping"\n[callbacks.limit]\nnetwork = false\n')
    assert "[callbacks[0]] limit: unknown option for callback 'early-stopping' (did you mean 'limits'?)" in err


def test_every_mistake_in_limits_is_reported_at_once(tmp_path, good):
    # only the first was: fixing a security setting took one run per mistake
    text = good + '\n[[callbacks]]\nuse = "early-stopping"\nlimits = { require = ["landlok"], memory_mb = "1GB" }\n'
    err = run_bad(tmp_path, text)
    assert "several problems:" in err and "limits.memory_mb: input should be a valid integer" in err
    assert "limits.require: unknown sandbox layer 'landlok' (did you mean 'landlock'?)" in err


def test_non_finite_option_values_are_refused(tmp_path, good):
    err = run_bad(tmp_path, good.replace("max_steps = 4", "max_steps = 4\nlearning_rate = inf"))
    assert "line 27: [trainer] learning_rate: must be a finite number (got inf)" in err
    err = run_bad(tmp_path, good, "--set", "model.dropout=nan")
    assert "[model] dropout (from --set model.dropout=nan): must be a finite number (got nan)" in err


def test_output_dir_below_a_file(tmp_path, good):
    (tmp_path / "afile").write_text("x")
    below = (tmp_path / "afile" / "run").as_posix()
    err = run_bad(tmp_path, good.replace(f'"{(tmp_path / "run").as_posix()}"', f'"{below}"'))
    assert "[pipeline] output_dir: " in err and "is below" in err and "which is a file" in err


def test_an_output_dir_the_os_refuses(tmp_path, good):
    """/sys refuses new folders even to root (a read-only filesystem gives the same path: an OSError)."""
    target = "/sys/apt-kernel-test-run"
    err = run_bad(tmp_path, good.replace(f'"{(tmp_path / "run").as_posix()}"', f'"{target}"'))
    assert f"cannot create the run folder {target}:" in err


def test_an_unknown_device(tmp_path, good):
    err = run_bad(tmp_path, good, "--set", 'trainer.device="tpu"')
    assert "[trainer] device (from --set trainer.device=\"tpu\"): unknown device 'tpu'" in err
    assert "auto, cpu, cuda, cuda:N, mps" in err


def test_max_seq_len_below_block_size_is_found_before_anything_is_created(tmp_path, good):
    err = run_bad(tmp_path, good.replace("d_ff = 64", "d_ff = 64\nmax_seq_len = 16"))
    assert "line 20: [model] max_seq_len: 16 is smaller than the data's block_size (32)" in err


def test_d_model_not_divisible_by_heads_names_its_line(tmp_path, good):
    err = run_bad(tmp_path, good.replace("num_heads = 2", "num_heads = 3"))
    assert "bad.toml: line 17: [model] num_heads: d_model = 32 is not divisible by num_heads = 3" in err


def test_set_with_an_empty_key_part_or_a_whole_table(tmp_path, good):
    err = run_bad(tmp_path, good, "--set", "trainer..epochs=3")
    assert "--set 'trainer..epochs=3': the key 'trainer..epochs' has an empty part" in err
    err = run_bad(tmp_path, good, "--set", "trainer=3")
    assert "--set trainer=3: trainer is a table, not a value; set a key inside it" in err


def test_errors_list_on_a_file_that_is_not_sqlite(tmp_path):
    bogus = tmp_path / "errors.db"
    bogus.write_text("not a database\n" * 100)
    result = cli("errors", "list", "--db", str(bogus))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{bogus} is not an error log (file is not a database)" in result.stderr
    assert bogus.read_text() == "not a database\n" * 100  # nothing lost
