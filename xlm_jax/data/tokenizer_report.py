"""`--mode=train_tokenizer`: train (or load) the run's tokenizer and check no language is starved.

  python -m xlm_jax.main --mode=train_tokenizer --config=configs/demo.py --workdir=runs/demo \
      --config.data.tokenizer=bpe

Reads the corpus as a training run does, gets the tokenizer as `prepare_data` would (so the
run that follows loads it), and measures each language on its held-out text (its training
text when it has none held out): tokens per whitespace word and per character (fertility;
per character is the fair one for languages written without spaces, e.g. ja), and the
fractions of tokens that are `<unk>` or SentencePiece byte-fallback pieces (`<0xE2>`). A
language whose rates stand far above the others' got too small a share of the vocabulary.
Prints the table and writes it to workdir/tokenizer_report.json. No model, no accelerator.
"""
import json
import re
from typing import Callable

import numpy as np
from etils import epath

from xlm_jax import config as config_lib
from xlm_jax.data.prepare import _tokenizer
from xlm_jax.data.text import read_text
from xlm_jax.data.tokenizers import Tokenizer, tokenizer_kind
from xlm_jax.workdir import make_workdir

REPORT_FILE = "tokenizer_report.json"
_BYTE_PIECE = re.compile(r"(?:.+:)?<0x[0-9A-F]{2}>")   # "de:<0xE2>" with data.language_id_ranges


def fertility(tokenizer: Tokenizer, sentences: list[str]) -> float:
    """Tokens per whitespace-separated word: how finely a tokenizer cuts a language."""
    words = sum(len(s.split()) for s in sentences)
    tokens = sum(len(ids) for ids in tokenizer.encode(list(sentences)))
    return tokens / max(words, 1)


def _byte_piece_ids(tokenizer: Tokenizer) -> np.ndarray:
    """Sorted ids of SentencePiece byte-fallback pieces; none for other tokenizers."""
    if tokenizer_kind(tokenizer) not in ("unigram", "bpe"):
        return np.zeros(0, np.int64)
    return np.array([i for i in range(tokenizer.vocab_size) if _BYTE_PIECE.fullmatch(tokenizer.id_to_piece(i))],
                    np.int64)


def language_stats(tokenizer: Tokenizer, sentences: list[str]) -> dict:
    """Counts and rates of one language's text under `tokenizer` (see the module docstring)."""
    ids = tokenizer.encode(list(sentences))
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    tokens, words, chars = len(flat), sum(len(s.split()) for s in sentences), sum(map(len, sentences))
    return dict(sentences=len(sentences), words=words, chars=chars, tokens=tokens,
                tokens_per_word=tokens / max(words, 1), tokens_per_char=tokens / max(chars, 1),
                unk_rate=float(np.sum(flat == tokenizer.unk_id)) / max(tokens, 1),
                byte_fallback_rate=float(np.isin(flat, _byte_piece_ids(tokenizer)).sum()) / max(tokens, 1))


def format_table(stats: dict[str, dict]) -> str:
    """One row per language: the rates of `language_stats`, unknown and byte-fallback in percent."""
    lines = [f"{'lang':<8}{'text':>10}{'sentences':>11}{'tokens/word':>13}{'tokens/char':>13}"
             f"{'unk %':>8}{'bytes %':>9}"]
    for lang, s in sorted(stats.items()):
        lines.append(f"{lang:<8}{s['text']:>10}{s['sentences']:>11,}{s['tokens_per_word']:>13.3f}"
                     f"{s['tokens_per_char']:>13.3f}{100 * s['unk_rate']:>8.2f}{100 * s['byte_fallback_rate']:>9.2f}")
    return "\n".join(lines)


def tokenizer_report(tokenizer: Tokenizer, text_by_language: dict[str, tuple[str, list[str]]]) -> dict[str, dict]:
    """{lang: language_stats + "text"} for {lang: ("held-out" or "training", sentences)}, each
    language's text encoded as that language's (its own ids, with data.language_id_ranges)."""
    return {lang: {"text": kind, **language_stats(tokenizer.for_language(lang), sentences)}
            for lang, (kind, sentences) in sorted(text_by_language.items())}


def train_tokenizer(config, workdir: str, log: Callable[[str], None] = print) -> dict:
    """The mode: validates the config, trains or loads the workdir's tokenizer, prints and writes the report."""
    config_lib.validate(config)
    make_workdir(workdir)
    corpus = read_text(config, log=log)    # all shards, in this one process
    text = {}
    for lang in corpus.languages:
        held_out = corpus.own_held_out(lang)
        text[lang] = ("held-out", held_out) if held_out else ("training", corpus.own_train(lang))
    tokenizer = _tokenizer(config, workdir, corpus, corpus.sentence_probs()[1], log)
    stats = tokenizer_report(tokenizer, text)
    log(f"tokenizer: {tokenizer_kind(tokenizer)}, {tokenizer.vocab_size} ids\n" + format_table(stats))
    path = epath.Path(workdir) / REPORT_FILE
    path.write_text(json.dumps({"tokenizer": tokenizer_kind(tokenizer), "vocab_size": tokenizer.vocab_size,
                                "languages": stats}, indent=2, ensure_ascii=False), encoding="utf-8")
    log(f"report: {path}")
    return stats
