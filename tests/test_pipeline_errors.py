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
    assert "bad.toml: line 5: [pipeline] sede: unknown key" in err


def test_unknown_component_option_suggests(tmp_path, good):
    err = run_bad(tmp_path, good.replace("d_model = 32", "d_modle = 32"))
    assert "line 16: [model] d_modle: unknown option for model 'apt-lm' (did you mean 'd_model'?)" in err


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
    assert "[data] give exactly one of path, texts or corpus (got texts, corpus)" in err


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
    assert "[pipeline] output_dir: " in result.stderr and "exists and is not a folder" in result.stderr
