"""Mistakes a user can make on the command line end in one clear line and exit status 2, before
any data is read or anything is written: typos in config fields, config files, workdirs,
broken JSON, a missing optional package, evaluating a run that has no checkpoint."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args, module="xlm_jax.main", blocked=(), tmp_path=None) -> subprocess.CompletedProcess:
    """`python -m module args` as a user runs it; `blocked` packages are made uninstalled
    (a sitecustomize puts None in sys.modules, so find_spec and import both fail)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    if blocked:
        site = tmp_path / "blocked_site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(
            "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked))
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("xlm_jax: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_an_unknown_config_field_is_named_with_its_near_miss(tmp_path):
    workdir = tmp_path / "run"
    result = run_cli("--config=configs/demo.py", f"--workdir={workdir}", "--config.train.num_step=3")
    assert_one_line_error(result, "config field `train.num_step` (from --config.train.num_step=3) does not exist",
                          "did you mean `train.num_steps`?")
    result = run_cli("--config=configs/demo.py", f"--workdir={workdir}", "--config.train.bogus_field=3")
    assert_one_line_error(result, "config field `train.bogus_field`", "xlm_jax/config.py")
    result = run_cli("--config=configs/demo.py", f"--workdir={workdir}", "--config.trian.num_steps=3")
    assert_one_line_error(result, "config field `trian`", "did you mean `train`?")
    assert not workdir.exists()


def test_bad_flags_and_config_files_are_one_line(tmp_path):
    assert_one_line_error(run_cli("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.train.num_steps=x"),
                          "--config.train.num_steps=x", "invalid literal for int()")
    assert_one_line_error(run_cli("--config=configs/nope.py", f"--workdir={tmp_path}"),
                          "--config=configs/nope.py: no such file", "demo.py")
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config():\n    raise RuntimeError('no recipe here')\n")
    assert_one_line_error(run_cli(f"--config={broken}", f"--workdir={tmp_path}"),
                          f"--config={broken}: the config file could not be loaded (RuntimeError: no recipe here)")
    assert_one_line_error(run_cli("--config=configs/demo.py"), "--workdir")


def _unwritable_directory(tmp_path) -> pathlib.Path:
    """An existing directory this process cannot write: a read-only one, or (root ignores
    permissions) sysfs, which refuses new files to everyone."""
    candidates = [pathlib.Path("/sys/kernel")]
    if os.getuid() != 0:
        candidates.insert(0, tmp_path / "read_only")
        candidates[0].mkdir()
        candidates[0].chmod(0o500)
    for directory in candidates:
        try:
            (directory / ".probe").touch()
            (directory / ".probe").unlink()
        except OSError:
            return directory
    pytest.skip("no unwritable directory on this machine")


def test_a_workdir_that_cannot_be_created_or_written(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    for mode in ("train", "train_tokenizer"):
        assert_one_line_error(run_cli("--config=configs/demo.py", f"--workdir={blocker}/run", f"--mode={mode}"),
                              f"--workdir={blocker}/run: cannot create it", "choose a directory you can write")
    read_only = _unwritable_directory(tmp_path)
    assert_one_line_error(run_cli("--config=configs/demo.py", f"--workdir={read_only}"),
                          f"--workdir={read_only}: cannot write to it")


def test_evaluate_without_a_checkpoint_writes_nothing(tmp_path):
    absent = tmp_path / "absent"
    assert_one_line_error(run_cli("--config=configs/demo.py", f"--workdir={absent}", "--mode=evaluate"),
                          "no checkpoint in", "train first")
    assert not absent.exists()
    started = tmp_path / "started"   # a run directory whose training never saved a checkpoint
    started.mkdir()
    (started / "config.json").write_text("{}")
    assert_one_line_error(run_cli("--config=configs/demo.py", f"--workdir={started}", "--mode=evaluate"),
                          "train first")
    assert sorted(p.name for p in started.iterdir()) == ["config.json"]


def test_a_run_config_json_that_is_not_json(tmp_path):
    (tmp_path / "config.json").write_text('{"model": {"num_layers": 2,\n  oops}\n')
    line = assert_one_line_error(run_cli("--mode=export_hf", f"--workdir={tmp_path}",
                                         f"--export_dir={tmp_path / 'out'}"),
                                 f"{tmp_path / 'config.json'} is not valid JSON (line 2, column 3")
    assert "rewrites config.json" in line and not (tmp_path / "out").exists()
    import xlm_jax
    from xlm_jax.errors import CheckpointError
    (tmp_path / "config.json").write_text("")
    with pytest.raises(CheckpointError, match=r"config\.json is empty; every training start writes it"):
        xlm_jax.load(str(tmp_path))


def test_a_transformers_config_json_that_is_not_json(tmp_path):
    from xlm_jax.errors import CheckpointError
    from xlm_jax.interop.hf import read_hf_config

    (tmp_path / "config.json").write_text('{"model_type": "xlm-roberta",}')
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON \(line 1, column 30: Expecting "
                                              r"property name.*save_pretrained"):
        read_hf_config(str(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must hold a JSON object, not list"):
        read_hf_config(str(tmp_path))


def test_a_missing_optional_package_is_named_with_its_install_command(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "xlm-roberta", "num_hidden_layers": 2}))
    (hf / "pytorch_model.bin").write_bytes(b"a torch checkpoint")
    result = run_cli("--config=configs/demo.py", f"--workdir={tmp_path / 'run'}", f"--config.init_from=hf:{hf}",
                     f"--config.data.corpus_dir={tmp_path / 'no_corpus_here'}", blocked=("torch",), tmp_path=tmp_path)
    # Named before the corpus is read: the corpus directory does not even exist.
    assert_one_line_error(result, f"reading {hf / 'pytorch_model.bin'}", "needs the `torch` package",
                          "pip install 'xlm_jax[hf]'")
    result = run_cli("--compare=hf_torch", "--steps=1", module="xlm_jax.benchmarks.train_step",
                     blocked=("torch",), tmp_path=tmp_path)
    assert_one_line_error(result, "--compare=hf_torch needs the `torch` package", "pip install 'xlm_jax[hf]'")
    assert "tokens/s" not in result.stdout   # stopped before building or timing anything
