"""`--mode=train_tokenizer`: data.tokenizer in the config, and the per-language fertility report."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from xlm_jax.config import default_config
from xlm_jax.modes.prepare import validate
from xlm_jax.data.sampling import temperature_probs
from xlm_jax.data.tokenizer_report import REPORT_FILE, fertility, language_stats
from xlm_jax.modes.train_tokenizer import train_tokenizer
from xlm_jax.data.tokenizers import BYTES_FILE, ByteTokenizer, train_sentencepiece
from xlm_jax.errors import ConfigError


def test_byte_rates_by_hand():
    stats = language_stats(ByteTokenizer(), ["hello world", "αβγ"])   # 11 ASCII bytes, 3 two-byte letters
    assert (stats["sentences"], stats["words"], stats["chars"], stats["tokens"]) == (2, 3, 14, 17)
    assert stats["tokens_per_word"] == 17 / 3 and stats["tokens_per_char"] == 17 / 14
    assert language_stats(ByteTokenizer(), ["plain ascii"])["tokens_per_char"] == 1
    assert language_stats(ByteTokenizer(), ["αβγ δεζ"])["tokens_per_char"] == 13 / 7   # 6 letters x 2 + space
    assert stats["unk_rate"] == stats["byte_fallback_rate"] == 0
    assert fertility(ByteTokenizer(), ["hello world", "αβγ"]) == 17 / 3


@pytest.mark.parametrize("byte_fallback", [True, False])
def test_unknown_and_byte_fallback_rates(shared_data, byte_fallback):
    text = {"en": (shared_data / "mono" / "en.txt").read_text(encoding="utf-8").split("\n")[:1000]}
    tok = train_sentencepiece(text, temperature_probs({"en": 1000}, 0.3), 500, input_sentence_size=1000,
                              character_coverage=1.0, byte_fallback=byte_fallback, seed=0)
    stats = language_stats(tok, ["\u2603"])          # a snowman: not in English text, 3 UTF-8 bytes
    pieces = [tok.id_to_piece(i) for i in tok.encode(["\u2603"])[0]]
    if byte_fallback:
        assert pieces[-3:] == ["<0xE2>", "<0x98>", "<0x83>"]
        assert stats["byte_fallback_rate"] == 3 / len(pieces) and stats["unk_rate"] == 0
    else:
        assert pieces[-1] == "<unk>"
        assert stats["unk_rate"] == 1 / len(pieces) and stats["byte_fallback_rate"] == 0


def test_bad_tokenizer_config_names_the_field():
    config = default_config()
    config.data.tokenizer = "wordpiece"
    with pytest.raises(ConfigError, match=r"data\.tokenizer.*unigram, bpe, bytes"):
        validate(config)
    config.data.tokenizer = "bytes"
    with pytest.raises(ConfigError, match=r"model\.vocab_size.*8002.*vocab_size=261"):
        validate(config)
    config.model.vocab_size = 261
    validate(config)


@pytest.fixture()
def corpus_dir(shared_data, tmp_path):
    directory = tmp_path / "corpus"
    directory.mkdir()
    for lang in ("en", "el", "ja"):
        lines = (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").split("\n")[:300]
        (directory / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def test_bytes_report_and_a_workdir_of_another_kind(corpus_dir, tmp_path):
    config = default_config()
    config.data.corpus_dir, config.data.tokenizer, config.model.vocab_size = str(corpus_dir), "bytes", 261
    lines = []
    stats = train_tokenizer(config, str(tmp_path / "run"), log=lines.append)
    assert (tmp_path / "run" / BYTES_FILE).exists()
    assert sorted(stats) == ["el", "en", "ja"] and {s["text"] for s in stats.values()} == {"held-out"}
    for lang, s in stats.items():                                  # the last tenth of 300 lines is held out
        held_out = (corpus_dir / f"{lang}.txt").read_text(encoding="utf-8").split("\n")[270:300]
        assert s["sentences"] == 30 and s["chars"] == sum(map(len, held_out))
        assert s["tokens"] == sum(len(line.encode("utf-8")) for line in held_out)
    assert 0.99 < stats["en"]["tokens_per_char"] < 1.01            # (nearly) all ASCII
    assert 1.7 < stats["el"]["tokens_per_char"] < 2.0              # Greek letters are 2 bytes, spaces 1
    assert 2.5 < stats["ja"]["tokens_per_char"] <= 3               # kana and kanji are 3 bytes
    config.data.tokenizer, config.model.vocab_size = "unigram", 261
    with pytest.raises(ConfigError, match=r"data\.tokenizer.*'bytes'"):
        train_tokenizer(config, str(tmp_path / "run"), log=lines.append)


def test_train_tokenizer_mode(corpus_dir, tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "xlm_jax.main", "--mode=train_tokenizer", "--config=configs/demo.py",
         f"--workdir={workdir}", f"--config.data.corpus_dir={corpus_dir}", "--config.data.tokenizer=bpe",
         "--config.model.vocab_size=1000", "--config.data.tokenizer_sentences=2000",
         "--config.data.character_coverage=0.98"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "tokens/word" in result.stdout and "bytes %" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[:2] in
            (["el", "held-out"], ["en", "held-out"], ["ja", "held-out"])]
    assert [row[0] for row in rows] == ["el", "en", "ja"]
    report = json.loads((workdir / REPORT_FILE).read_text(encoding="utf-8"))
    assert (report["tokenizer"], report["vocab_size"]) == ("bpe", 1000)
    assert [float(row[3]) for row in rows] == [round(report["languages"][lang]["tokens_per_word"], 3)
                                               for lang in ("el", "en", "ja")]
    assert report["languages"]["ja"]["byte_fallback_rate"] > 0.05   # 98% coverage leaves rare kanji to bytes
    assert (workdir / "tokenizer.model").exists()
    assert not list(workdir.glob("checkpoint*"))


def test_prepare_data_packs_bytes(corpus_dir, tmp_path):
    from xlm_jax.data.prepare import prepare_data
    config = default_config()
    config.data.corpus_dir, config.data.tokenizer, config.model.vocab_size = str(corpus_dir), "bytes", 261
    config.data.seq_len = 64
    data = prepare_data(config, str(tmp_path / "run"), log=lambda _: None)
    assert isinstance(data.tokenizer, ByteTokenizer) and (tmp_path / "run" / BYTES_FILE).exists()
    blocks = data.train_blocks[data.languages.index("en")][0]   # en is replicated: 300 lines in 32 shards
    assert blocks.shape[1] == 64 and blocks.max() < 260 and (blocks[:, 0] == 0).all()
    first = (corpus_dir / "en.txt").read_text(encoding="utf-8").split("\n")[0]
    assert data.tokenizer.decode(blocks[0]).startswith(first[:20])
