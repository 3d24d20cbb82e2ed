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


@pytest.fixture(scope="module")
def run_from_hf(hf_dir, tmp_path_factory):
    """A run started from hf_dir: one step at learning rate 0 (warmup starts at 0), so its
    checkpoint must hold exactly the imported weights, in the run's own vocabulary padding
    (302 ids padded to 320 here, where an import pads to 384 by default)."""
    directory, text = hf_dir
    root = tmp_path_factory.mktemp("from_hf")
    corpus = root / "corpus"
    corpus.mkdir()
    for lang, lines in text.items():
        (corpus / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    workdir = root / "run"
    # Architecture flags in TINY (and hidden_size=48) are overridden by the checkpoint's config.json.
    result = subprocess.run(
        [sys.executable, "-m", "xlm_jax.main", "--config=configs/demo.py", f"--workdir={workdir}",
         f"--config.data.corpus_dir={corpus}", *TINY, f"--config.init_from=hf:{directory}",
         "--config.model.hidden_size=48", "--config.model.vocab_pad_multiple=64",
         "--config.train.num_steps=1", "--config.train.warmup_steps=1"],
        cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir, result.stdout


def test_training_starts_from_the_imported_weights(hf_dir, run_from_hf):
    import jax

    from xlm_jax import load
    from xlm_jax.interop.hf import import_hf
    from xlm_jax.models.vocab_padding import resize_vocab_rows

    directory, _ = hf_dir
    workdir, stdout = run_from_hf
    assert f"initialized from hf:{directory}" in stdout
    assert (workdir / "tokenizer.model").read_bytes() == (directory / "sentencepiece.bpe.model").read_bytes()
    model = load(str(workdir))
    assert model.config.model.hidden_size == 32 and model.config.model.vocab_size == 302
    imported = resize_vocab_rows(import_hf(str(directory)).params, 320)
    assert model.params["encoder"]["embeddings"]["word_embeddings"]["embedding"].shape == (320, 32)
    for got, want in zip(jax.tree.leaves(model.params), jax.tree.leaves(imported)):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_export_cli_gives_back_the_imported_checkpoint_bit_for_bit(hf_dir, run_from_hf, tmp_path):
    """hf -> xlm_jax (init_from, one step at learning rate 0) -> hf: every tensor unchanged."""
    from safetensors.numpy import load_file

    directory, _ = hf_dir
    workdir, exported = run_from_hf[0], tmp_path / "exported"
    export = subprocess.run(
        [sys.executable, "-m", "xlm_jax.main", "--mode=export_hf", f"--workdir={workdir}",
         f"--export_dir={exported}"], cwd=REPO_ROOT, env=environment(), capture_output=True, text=True,
        timeout=300)
    assert export.returncode == 0, export.stdout + export.stderr
    assert f"exported step 1 of {workdir}" in export.stdout
    original, got = load_file(str(directory / "model.safetensors")), load_file(str(exported / "model.safetensors"))
    assert sorted(got) == sorted(original)
    for name, value in original.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert (exported / "sentencepiece.bpe.model").read_bytes() == (directory / "sentencepiece.bpe.model").read_bytes()

    again = subprocess.run(
        [sys.executable, "-m", "xlm_jax.main", "--mode=export_hf", f"--workdir={workdir}",
         f"--export_dir={exported}"], cwd=REPO_ROOT, env=environment(), capture_output=True, text=True,
        timeout=300)
    assert again.returncode == 2 and "is not empty" in again.stderr


def test_export_cli_names_what_is_missing(tmp_path):
    def export(*flags):
        return subprocess.run([sys.executable, "-m", "xlm_jax.main", "--mode=export_hf", *flags],
                              cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=120)

    no_dir = export(f"--workdir={tmp_path}")
    assert no_dir.returncode == 2 and "--export_dir" in no_dir.stderr
    no_run = export(f"--workdir={tmp_path / 'nothing'}", f"--export_dir={tmp_path / 'out'}")
    assert no_run.returncode == 2 and "nothing" in no_run.stderr, no_run.stderr
    assert not (tmp_path / "out").exists()


def test_init_from_must_name_a_transformers_directory(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "xlm_jax.main", "--config=configs/demo.py", f"--workdir={tmp_path / 'r'}",
         f"--config.init_from={tmp_path}"], cwd=REPO_ROOT, env=environment(), capture_output=True,
        text=True, timeout=120)
    assert result.returncode == 2 and "init_from" in result.stderr and "hf:DIR" in result.stderr


def test_mbert_style_checkpoint_continues_pretraining_with_its_wordpiece_vocab(shared_data, tmp_path):
    """A BertForPreTraining directory with vocab.txt: positions from 0, two token types, the
    pooler kept and exported unchanged, the next-sentence head named as left out."""
    from safetensors.numpy import load_file
    from tokenizers import BertWordPieceTokenizer

    from tests.interop.test_hf_import import save_random_hf
    from xlm_jax import load

    text = {lang: (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:300]
            for lang in ("en", "yo")}
    directory, corpus = tmp_path / "mbert", tmp_path / "corpus"
    corpus.mkdir()
    for lang, lines in text.items():
        (corpus / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    trainer = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    trainer.train_from_iterator(text["en"] + text["yo"], vocab_size=400)
    directory.mkdir()
    trainer.save_model(str(directory))
    vocab_size = len((directory / "vocab.txt").read_text(encoding="utf-8").splitlines())
    (directory / "tokenizer_config.json").write_text('{"do_lower_case": false, "tokenizer_class": "BertTokenizer"}')
    save_random_hf(directory, "bert", 2, 32, 2, 64, vocab_size, max_positions=64, kind="pretraining")

    workdir, exported = tmp_path / "run", tmp_path / "exported"
    train = subprocess.run(
        [sys.executable, "-m", "xlm_jax.main", "--config=configs/demo.py", f"--workdir={workdir}",
         f"--config.data.corpus_dir={corpus}", *TINY, f"--config.init_from=hf:{directory}",
         "--config.train.num_steps=2", "--config.train.warmup_steps=1"],
        cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stdout + train.stderr
    assert "left out cls.seq_relationship.bias, cls.seq_relationship.weight" in train.stdout
    model = load(str(workdir))
    m = model.config.model
    assert (m.position_offset, m.pad_token_id, m.type_vocab_size, m.pooler) == (0, 0, 2, True)
    assert model.tokenizer.vocab_size == vocab_size and model.tokenizer.pad_id == 0
    assert len(model.predict_masked("The [MASK] is here.", top_k=2)) == 1   # BERT's mask spelling

    export = subprocess.run(
        [sys.executable, "-m", "xlm_jax.main", "--mode=export_hf", f"--workdir={workdir}",
         f"--export_dir={exported}"], cwd=REPO_ROOT, env=environment(), capture_output=True, text=True,
        timeout=300)
    assert export.returncode == 0, export.stdout + export.stderr
    original, got = load_file(str(directory / "model.safetensors")), load_file(str(exported / "model.safetensors"))
    assert sorted(got) == sorted(k for k in original if not k.startswith("cls.seq_relationship"))
    for name in ("bert.pooler.dense.weight", "bert.pooler.dense.bias"):   # MLM leaves the pooler alone
        np.testing.assert_array_equal(got[name], original[name])
    assert not np.array_equal(got["bert.encoder.layer.0.output.dense.weight"],
                              original["bert.encoder.layer.0.output.dense.weight"])   # step 2 trained
    assert (exported / "vocab.txt").read_text(encoding="utf-8") == (directory / "vocab.txt").read_text(encoding="utf-8")


def test_a_run_resolves_the_imported_architecture_on_its_own_copy_of_the_config(hf_dir, tmp_path):
    """Prepared once (modes/prepare.Run): the transformers directory's architecture is the run's,
    validated with it; the caller's config is left as given, and the run's is locked."""
    from tests.helpers import tiny_config
    from xlm_jax.modes.prepare import Run

    directory, text = hf_dir
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang, lines in text.items():
        (corpus / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = tiny_config(hidden_size=48, num_heads=2, vocab_size=702, max_len=64)
    config.init_from, config.data.corpus_dir, config.data.seq_len = f"hf:{directory}", str(corpus), 32
    config.data.eval_sentences_per_language, config.model.vocab_pad_multiple = 20, 64
    config.mesh.data = -1   # every device the tests have
    given = config.to_dict()
    run = Run(config, str(tmp_path / "run"))
    run.checkpoints.close()
    assert config.to_dict() == given
    m = run.config.model
    assert (m.hidden_size, m.num_layers, m.mlp_dim, m.vocab_size) == (32, 2, 64, 302)
    assert run.trainer.model.config.hidden_size == 32
    with pytest.raises(AttributeError):
        run.config.model.new_field = 1
