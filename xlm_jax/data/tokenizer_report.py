"""What a tokenizer does to each language: fertility and unknown rates, to see a starved language.

Per language, on its held-out text (its training text when it has none held out): tokens per
whitespace word and per character (fertility; per character is the fair one for languages
written without spaces, e.g. ja), and the fractions of tokens that are `<unk>` or
SentencePiece byte-fallback pieces (`<0xE2>`). A language whose rates stand far above the
others' got too small a share of the vocabulary. `--mode=train_tokenizer`
(xlm_jax/modes/train_tokenizer.py) prints it and writes it beside the run's tokenizer.
"""
import re

import numpy as np

from xlm_jax.data.tokenizers import Tokenizer, tokenizer_kind

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
