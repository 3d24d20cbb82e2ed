"""Vocabulary extension for new languages: old ids and logits unchanged, new rows the means of
their old tokenizations, fewer tokens per word on the new language, and a continued-pretraining
run (`init_from` + `data.extend_vocab_pieces`) that extends once and resumes without re-extending.
"""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.interop.test_hf_import import save_random_xlmr
from tests.train.test_loop import REPO_ROOT, TINY, environment
from xlm_jax import config as config_lib
from xlm_jax.data.tokenizer_report import fertility
from xlm_jax.data.tokenizers import train_sentencepiece
from xlm_jax.errors import ConfigError, DataError
from xlm_jax.interop.hf import import_hf
from xlm_jax.interop.vocab import (WORD_START, adopt_vocab_extension, extend_params, extend_sentencepiece,
                                   new_row_sources)
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.models.vocab_padding import padded_vocab_size, round_up
from xlm_jax.modes.prepare import validate

pytest.importorskip("torch")
HELD_OUT = 300       # last lines of each mono file: never trained on, fertility measured there


def mono(shared_data, lang: str) -> list[str]:
    return (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def small_model(shared_data, tmp_path_factory):
    """A random transformers XLM-R with a 402-id SentencePiece vocabulary of en + el,
    extended with pieces trained on Yoruba."""
    text = {lang: mono(shared_data, lang)[:600] for lang in ("en", "el")}
    old = train_sentencepiece(text, {"en": 0.5, "el": 0.5}, 402, input_sentence_size=1200,
                              character_coverage=1.0, byte_fallback=False, seed=0)
    directory = tmp_path_factory.mktemp("hf")
    save_random_xlmr(directory, 2, 32, 2, 64, old.vocab_size, max_positions=66)
    imported = import_hf(str(directory))
    new, added = extend_sentencepiece(old, mono(shared_data, "yo")[:1000], 150, seed=0)
    return old, new, added, imported


def test_old_ids_keep_their_pieces_and_mask_moves_last(small_model):
    old, new, added, _ = small_model
    assert added and new.vocab_size == old.vocab_size + len(added)
    for i in range(old.vocab_size - 1):
        assert new.id_to_piece(i) == old.id_to_piece(i)
    assert [new.id_to_piece(i) for i in range(old.vocab_size - 1, new.vocab_size - 1)] == added
    assert new.mask_id == new.vocab_size - 1 and new.id_to_piece(new.mask_id) == "<mask>"


def test_transformers_reads_the_extended_model_with_mask_last(small_model, shared_data, tmp_path):
    transformers = pytest.importorskip("transformers")
    _, new, _, _ = small_model
    new.save(tmp_path / "sentencepiece.bpe.model")
    theirs = transformers.XLMRobertaTokenizer(vocab_file=str(tmp_path / "sentencepiece.bpe.model"))
    assert len(theirs) == new.vocab_size and theirs.mask_token_id == new.mask_id
    for line, ours in zip(mono(shared_data, "yo")[-5:], new.encode(mono(shared_data, "yo")[-5:])):
        assert theirs(line, add_special_tokens=False)["input_ids"] == ours.tolist()


def test_logits_on_text_the_old_vocabulary_covers_are_unchanged(small_model, shared_data):
    old, new, _, imported = small_model
    params = extend_params(imported.params, old, new)
    ids = np.full((3, 24), old.pad_id, np.int64)
    for row, tokens in enumerate(old.encode(mono(shared_data, "en")[-3:])):
        tokens = np.concatenate([[old.bos_id], tokens[:22], [old.eos_id]])
        ids[row, :len(tokens)] = tokens
    ids[:, 3] = old.mask_id
    new_ids = np.where(ids == old.mask_id, new.mask_id, ids)
    mask = ids != old.pad_id

    def outputs(model_config, params, ids):
        logits, hidden = MaskedLM(model_config).apply(
            {"params": params}, jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask),
            output_hidden_states=True)
        return np.asarray(logits), np.asarray(hidden)

    before, hidden_before = outputs(imported.model, imported.params, ids)
    grown = imported.model.copy_and_resolve_references()
    grown.vocab_size = new.vocab_size
    after, hidden_after = outputs(grown, params, new_ids)
    assert after.shape[-1] == padded_vocab_size(grown) >= new.vocab_size
    before, after = before[..., :old.vocab_size], after[..., :new.vocab_size]
    # Every hidden state is bit-identical; the logits are the same dot products, summed in an
    # order XLA's CPU matmul may block differently for a wider vocabulary (last-bit differences).
    np.testing.assert_array_equal(hidden_after[:, mask], hidden_before[:, mask])
    np.testing.assert_allclose(after[..., :old.vocab_size - 1][mask], before[..., :-1][mask], rtol=0, atol=1e-6)
    np.testing.assert_allclose(after[..., -1][mask], before[..., -1][mask], rtol=0, atol=1e-6)  # <mask>


def test_new_rows_are_means_of_the_old_tokenization(small_model):
    old, new, added, imported = small_model
    params = extend_params(imported.params, old, new)
    table = np.asarray(imported.params["encoder"]["embeddings"]["word_embeddings"]["embedding"])
    bias = np.asarray(imported.params["lm_head"]["bias"])
    grown = params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    np.testing.assert_array_equal(grown[:old.vocab_size - 1], table[:old.vocab_size - 1])
    np.testing.assert_array_equal(grown[new.vocab_size - 1], table[old.vocab_size - 1])   # <mask>
    # The model layout of the new vocabulary: zero rows up to the pad multiple.
    for rows in (grown, params["lm_head"]["bias"]):
        assert len(rows) == round_up(new.vocab_size, 128) and not rows[new.vocab_size:].any()
    # By hand: word-initial pieces read by the old tokenizer as a word (its ids for "▁" + word),
    # without a lone "▁" and without <unk> (the old model has no row that means the character).
    def by_hand(piece):
        ids = [i for i in old.encode([piece[1:]])[0] if old.id_to_piece(int(i)) not in (WORD_START, "<unk>")]
        row = old.vocab_size - 1 + added.index(piece)
        np.testing.assert_allclose(grown[row], table[ids].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(params["lm_head"]["bias"][row], bias[ids].mean(), rtol=1e-6)

    word_initial = [p for p in added if p.startswith(WORD_START) and len(old.encode([p[1:]])[0]) > 2]
    by_hand(next(p for p in word_initial if old.unk_id not in old.encode([p[1:]])[0]))
    by_hand(next(p for p in word_initial if old.unk_id in old.encode([p[1:]])[0]))
    # Word-internal pieces average word-internal old pieces: no "▁" in front.
    sources = new_row_sources(old, new)
    inner = [ids for p, ids in zip(added, sources) if not p.startswith(WORD_START)]
    assert inner and all(not old.id_to_piece(int(i)).startswith(WORD_START) for ids in inner for i in ids)


def test_fertility_drops_on_new_languages_and_does_not_rise_on_old(shared_data):
    base_langs, new_langs = ("en", "el", "uk", "vi", "ja"), ("yo", "cy", "zu", "tt")
    text = {lang: mono(shared_data, lang)[:2000] for lang in base_langs}
    base = train_sentencepiece(text, {lang: 0.2 for lang in base_langs}, 4002, input_sentence_size=10_000,
                               character_coverage=0.9995, byte_fallback=True, seed=0)
    old_held_out = {lang: mono(shared_data, lang)[-HELD_OUT:] for lang in base_langs if lang != "ja"}
    for lang in new_langs:
        lines = mono(shared_data, lang)
        held_out = lines[-HELD_OUT:]
        new, added = extend_sentencepiece(base, lines[:-HELD_OUT][:3000], 1000, seed=0)
        before, after = fertility(base, held_out), fertility(new, held_out)
        others = {o: (fertility(base, t), fertility(new, t)) for o, t in old_held_out.items()}
        print(f"{lang}: +{len(added)} pieces, tokens/word {before:.3f} -> {after:.3f}; old languages "
              + ", ".join(f"{o} {b:.3f}->{a:.3f}" for o, (b, a) in others.items()))
        assert after < 0.75 * before, lang
        for o, (b, a) in others.items():
            assert a <= 1.01 * b, (lang, o, b, a)     # shared pieces may help, never hurt


def test_extension_needs_init_from():
    config = config_lib.default_config()
    config.data.extend_vocab_pieces = 100
    with pytest.raises(ConfigError, match=r"data\.extend_vocab_pieces.*init_from"):
        validate(config)
    config.init_from = "hf:/somewhere"
    validate(config)


def test_workdir_tokenizer_is_extended_once_and_must_match_the_run(small_model, shared_data, tmp_path):
    old, _, _, _ = small_model
    source, workdir, corpus = tmp_path / "hf", tmp_path / "run", tmp_path / "corpus"
    for directory in (source, workdir, corpus):
        directory.mkdir()
    old.save(source / "sentencepiece.bpe.model")
    old.save(workdir / "tokenizer.model")      # as adopt_hf_tokenizer leaves it
    (corpus / "yo.txt").write_text("\n".join(mono(shared_data, "yo")[:500]) + "\n", encoding="utf-8")
    config = config_lib.default_config()
    config.init_from, config.data.corpus_dir, config.data.min_languages = f"hf:{source}", str(corpus), 1
    config.data.extend_vocab_pieces = 20
    with pytest.raises(DataError, match=r"num_pieces=20 is too small.*extend_vocab_pieces"):
        adopt_vocab_extension(config, str(source), str(workdir), resuming=False, log=lambda _: None)
    config.data.extend_vocab_pieces = 200
    with pytest.raises(ConfigError, match=r"data\.extend_vocab_pieces.*unextended"):
        adopt_vocab_extension(config, str(source), str(workdir), resuming=True, log=lambda _: None)
    logs = []
    _, new = adopt_vocab_extension(config, str(source), str(workdir), resuming=False, log=logs.append)
    assert config.model.vocab_size == new.vocab_size > old.vocab_size
    assert any("yo tokens per word" in line for line in logs)
    extended = (workdir / "tokenizer.model").read_bytes()
    assert extended == new.model_proto
    config.model.vocab_size, logs = old.vocab_size, []      # as hf_architecture sets it on a resume
    _, again = adopt_vocab_extension(config, str(source), str(workdir), resuming=True, log=logs.append)
    assert again.model_proto == extended and config.model.vocab_size == new.vocab_size
    assert any("reusing" in line for line in logs) and (workdir / "tokenizer.model").read_bytes() == extended
    config.data.extend_vocab_pieces = 0
    with pytest.raises(ConfigError, match=r"data\.extend_vocab_pieces.*extends"):
        adopt_vocab_extension(config, str(source), str(workdir), resuming=True, log=lambda _: None)


def test_extension_languages_pick_the_text_the_new_pieces_are_trained_on(small_model, shared_data, tmp_path):
    """English 6x Yoruba's size: pieces trained on Yoruba alone cut its tokens per word further
    than pieces trained on the mixed corpus, where most of them go to English words."""
    old, _, _, _ = small_model
    source, corpus = tmp_path / "hf", tmp_path / "corpus"
    for directory in (source, corpus):
        directory.mkdir()
    old.save(source / "sentencepiece.bpe.model")
    yoruba = mono(shared_data, "yo")
    (corpus / "yo.txt").write_text("\n".join(yoruba[:400]) + "\n", encoding="utf-8")
    (corpus / "en.txt").write_text("\n".join(mono(shared_data, "en")[:2400]) + "\n", encoding="utf-8")
    config = config_lib.default_config()
    config.init_from, config.data.corpus_dir, config.data.alpha = f"hf:{source}", str(corpus), 1.0
    config.data.extend_vocab_pieces = 300

    def extended(languages):
        config.data.extend_vocab_languages = languages
        workdir = tmp_path / f"run_{languages or 'all'}"
        workdir.mkdir()
        old.save(workdir / "tokenizer.model")
        logs = []
        _, new = adopt_vocab_extension(config, str(source), str(workdir), resuming=False, log=logs.append)
        return new, logs

    everything, everything_logs = extended("")
    yoruba_only, yoruba_logs = extended("yo")
    assert any("trained on the corpus" in line for line in everything_logs)
    assert any("trained on yo text" in line for line in yoruba_logs)
    held_out = yoruba[-HELD_OUT:]
    assert fertility(yoruba_only, held_out) < 0.95 * fertility(everything, held_out) < fertility(old, held_out)
    with pytest.raises(ConfigError, match=r"`data.extend_vocab_languages`: got 'yo,sw', but the corpus has no sw; "
                                          r"its languages are en, yo"):
        extended("yo,sw")
    config.data.extend_vocab_pieces = 0
    with pytest.raises(ConfigError, match=r"`data.extend_vocab_languages`: got 'yo,sw' with data.extend_vocab_pieces=0"):
        validate(config)


def test_continued_pretraining_extends_once_and_resumes(shared_data, tmp_path):
    from xlm_jax import load

    text = {lang: mono(shared_data, lang)[:400] for lang in ("en", "sw")}
    old = train_sentencepiece(text, {"en": 0.5, "sw": 0.5}, 302, input_sentence_size=800,
                              character_coverage=1.0, byte_fallback=False, seed=0)
    directory = tmp_path / "hf"
    save_random_xlmr(directory, 2, 32, 2, 64, old.vocab_size, max_positions=66)
    old.save(directory / "sentencepiece.bpe.model")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "yo.txt").write_text("\n".join(mono(shared_data, "yo")[:400]) + "\n", encoding="utf-8")
    workdir = tmp_path / "run"

    def run(steps):
        # Step 1 runs at learning rate 0 (warmup starts at 0): its checkpoint is the initialization.
        result = subprocess.run(
            [sys.executable, "-m", "xlm_jax.main", "--config=configs/demo.py", f"--workdir={workdir}",
             f"--config.data.corpus_dir={corpus}", *TINY, f"--config.init_from=hf:{directory}",
             "--config.data.min_languages=1", "--config.data.extend_vocab_pieces=200",
             f"--config.train.num_steps={steps}", "--config.train.warmup_steps=1"],
            cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    first = run(1)
    assert "vocabulary: added" in first and "vocabulary: yo tokens per word" in first
    tokenizer_bytes = (workdir / "tokenizer.model").read_bytes()
    model = load(str(workdir))
    new = model.tokenizer
    assert new.vocab_size > old.vocab_size == 302
    assert model.config.model.vocab_size == new.vocab_size
    expected = extend_params(import_hf(str(directory)).params, old, new)
    for got, want in zip(jax.tree.leaves(model.params), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(got), want)

    second = run(2)
    assert "resumed from" in second and "reusing the run's extended tokenizer" in second
    assert "vocabulary: added" not in second
    assert (workdir / "tokenizer.model").read_bytes() == tokenizer_bytes
    model = load(str(workdir))
    assert model.step == 2
    padded = padded_vocab_size(model.config.model)
    assert model.params["encoder"]["embeddings"]["word_embeddings"]["embedding"].shape == (padded, 32)
    assert model.params["lm_head"]["bias"].shape == (padded,)
