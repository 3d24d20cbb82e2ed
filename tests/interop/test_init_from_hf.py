"""`--config.init_from=hf:DIR`: training starts from a transformers XLM-R directory."""
import subprocess
import sys

import numpy as np
import pytest

from tests.interop.test_hf_import import save_random_xlmr
from tests.train.test_loop import REPO_ROOT, TINY, environment

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def hf_dir(shared_data, tmp_path_factory):
    """A random XLM-R plus a SentencePiece model of matching size, as transformers ships them."""
    from xlm_jax.data.tokenizers import train_sentencepiece

    text = {lang: (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:400]
            for lang in ("en", "sw")}
    tokenizer = train_sentencepiece(text, {"en": 0.5, "sw": 0.5}, 302, input_sentence_size=800,
                                    character_coverage=1.0, byte_fallback=False, seed=0)
    directory = tmp_path_factory.mktemp("hf")
    save_random_xlmr(directory, 2, 32, 2, 64, 302, max_positions=66)
    tokenizer.save(directory / "sentencepiece.bpe.model")
    return directory, text


def test_training_starts_from_the_imported_weights(hf_dir, tmp_path):
    from xlm_jax import load
    from xlm_jax.interop.hf import import_xlmr

    directory, text = hf_dir
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang, lines in text.items():
        (corpus / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    workdir = tmp_path / "run"
    # Architecture flags in TINY are overridden by the checkpoint's config.json; step 1 runs
    # at learning rate 0 (warmup starts at 0), so the saved params must equal the imported ones.
    result = subprocess.run(
        [sys.executable, "-m", "xlm_jax.main", "--config=configs/demo.py", f"--workdir={workdir}",
         f"--config.data.corpus_dir={corpus}", *TINY, f"--config.init_from=hf:{directory}",
         "--config.model.hidden_size=48", "--config.train.num_steps=1", "--config.train.warmup_steps=1"],
        cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"initialized from hf:{directory}" in result.stdout
    assert (workdir / "tokenizer.model").read_bytes() == (directory / "sentencepiece.bpe.model").read_bytes()
    model = load(str(workdir))
    assert model.config.model.hidden_size == 32 and model.config.model.vocab_size == 302
    _, imported, _ = import_xlmr(str(directory))
    import jax
    for got, want in zip(jax.tree.leaves(model.params), jax.tree.leaves(imported)):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_init_from_must_name_a_transformers_directory(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "xlm_jax.main", "--config=configs/demo.py", f"--workdir={tmp_path / 'r'}",
         f"--config.init_from={tmp_path}"], cwd=REPO_ROOT, env=environment(), capture_output=True,
        text=True, timeout=120)
    assert result.returncode == 2 and "init_from" in result.stderr and "hf:DIR" in result.stderr
