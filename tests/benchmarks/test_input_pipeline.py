"""The input-pipeline benchmark measures both paths and the train step of the same config."""
import os
import pathlib
import re
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_prints_rates_per_host_and_core_and_the_ratio_to_the_train_step(shared_data, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang in ("en", "yo"):
        lines = (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:300]
        (corpus / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0")
    result = subprocess.run(
        [sys.executable, "-m", "xlm_jax.benchmarks.input_pipeline", "--config=configs/demo.py",
         f"--config.data.corpus_dir={corpus}", f"--workdir={tmp_path / 'run'}", "--seconds=0.5",
         "--step_steps=1", "--config.model.num_layers=1", "--config.model.hidden_size=32",
         "--config.model.num_heads=2", "--config.model.mlp_dim=64", "--config.model.vocab_size=502",
         "--config.data.tokenizer_sentences=2000", "--config.train.batch_size=4"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    number = r"[\d,]+"
    for path in (r"on the fly \(encode \+ pack\)", "on the fly, then masked and batched",
                 r"prepared \(sample \+ mask \+ batch\)"):
        assert re.search(rf"{path}: {number} \w+/s  ({number}) tokens/s per host  ({number}) per core", out), out
    rates = re.search(rf"prepared .*?({number}) tokens/s per host", out).group(1)
    assert int(rates.replace(",", "")) > 0
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"ratio_prepared_vs_step=[\d.]+ ratio_on_the_fly_vs_step=[\d.]+", last), out
    assert (tmp_path / "run" / "tokenizer.model").exists()


def test_streams_flag_times_every_stream_together(shared_data, tmp_path):
    """--streams=blocks,tlm,pairs: MLM, TLM and pair batches pulled together from real text and
    pairs; the prepared rate is the sum of the streams' rates."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = (shared_data / "mono" / "en.txt").read_text(encoding="utf-8").splitlines()[:300]
    (corpus / "en.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pairs = (shared_data / "parallel" / "tico19" / "en-sw.tsv").read_text(encoding="utf-8").splitlines()[:200]
    (corpus / "en-sw.tsv").write_text("\n".join(pairs) + "\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "xlm_jax.benchmarks.input_pipeline", "--config=configs/demo.py",
         f"--config.data.corpus_dir={corpus}", f"--workdir={tmp_path / 'run'}", "--seconds=0.5", "--step_steps=0",
         "--streams=blocks,tlm,pairs", "--config.model.vocab_size=502", "--config.data.tokenizer_sentences=2000",
         "--config.train.batch_size=4"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    total = int(re.search(r"prepared \(sample \+ mask \+ batch\): [\d,]+ examples/s  ([\d,]+) tokens/s per host",
                          out).group(1).replace(",", ""))
    rates = {name: int(rate.replace(",", "")) for name, rate in
             re.findall(r"  stream (\w+) \(\w+, 4 rows a step\): ([\d,]+) tokens/s per host", out)}
    assert sorted(rates) == ["mlm", "pairs", "tlm"] and min(rates.values()) > 0, out
    assert abs(sum(rates.values()) - total) <= 3, out   # each rounded to a token/s
    # every stream every step, 4 rows each: a pair row is two sequences
    assert abs(rates["tlm"] - rates["mlm"]) <= 1 and abs(rates["pairs"] - 2 * rates["mlm"]) <= 2, out
