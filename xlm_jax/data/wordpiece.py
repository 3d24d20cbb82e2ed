"""BERT's WordPiece tokenizer (mBERT's vocab.txt), id for id as transformers' BertTokenizer.

The algorithm of BERT's tokenization.py, in the order transformers' slow BertTokenizer runs it:
special tokens ([CLS], [MASK], ...) written in the text are kept whole; then per text: drop
U+0000, U+FFFD and control characters, turn whitespace into spaces, put spaces around CJK
ideographs, NFC, split on whitespace; then per word: lowercase (character by character, so a
final Σ becomes σ, not ς, as in both transformers tokenizers) and strip accents (NFD, drop Mn)
as configured, split off every punctuation character (Unicode P* plus ASCII symbols), and
cut each piece greedily longest-match-first into vocabulary entries, continuations prefixed
by `##`; a piece longer than 100 characters, or one with no such cut, becomes [UNK].
Everything after the whitespace split is a function of the word alone, so it is cached.
"""
import functools
import re
import unicodedata

import numpy as np

from xlm_jax.errors import DataError

CLS, SEP, PAD, UNK, MASK = "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"
SPECIAL_TOKENS = (CLS, SEP, PAD, UNK, MASK)
MAX_INPUT_CHARS_PER_WORD = 100
_WORD_CACHE = 1 << 18          # distinct words remembered: the frequent ones cover most text


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    """Unicode P*, plus every non-alphanumeric printable ASCII character ($, ^, `, ...)."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk_ideograph(cp: int) -> bool:
    """The CJK Unified Ideographs blocks (not Hiragana, Katakana or Hangul, which use spaces)."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class _CleanTable(dict):
    """str.translate table built lazily: control -> deleted, whitespace -> ' ', CJK -> ' c '."""

    def __init__(self, tokenize_chinese_chars: bool):
        super().__init__()
        self.tokenize_chinese_chars = tokenize_chinese_chars

    def __missing__(self, cp: int):
        char = chr(cp)
        if cp == 0 or cp == 0xFFFD or _is_control(char):
            value = None
        elif _is_whitespace(char):
            value = " "
        elif self.tokenize_chinese_chars and _is_cjk_ideograph(cp):
            value = f" {char} "
        else:
            value = char
        self[cp] = value
        return value


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def _split_on_punctuation(text: str) -> list[str]:
    out, start = [], 0
    for i, char in enumerate(text):
        if _is_punctuation(char):
            if start < i:
                out.append(text[start:i])
            out.append(char)
            start = i + 1
    if start < len(text):
        out.append(text[start:])
    return out


class WordPieceTokenizer:
    """BERT WordPiece: [CLS] is bos, [SEP] eos; encode adds neither.

    vocab: the lines of a BERT vocab.txt (id = line number). Options as in transformers'
    BertTokenizer: strip_accents=None follows do_lower_case (the original BERT).
    """
    languages: tuple[str, ...] = ()

    def for_language(self, language: str) -> "WordPieceTokenizer":
        """Every language shares these ids."""
        del language
        return self

    def __init__(self, vocab, *, do_lower_case: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True):
        self.vocab = [str(token) for token in vocab]
        self.do_lower_case = bool(do_lower_case)
        self.strip_accents = None if strip_accents is None else bool(strip_accents)
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self._ids = {}
        for i, token in enumerate(self.vocab):
            if token in self._ids:
                raise DataError(f"WordPiece vocabulary has {token!r} twice (ids {self._ids[token]} and {i})")
            self._ids[token] = i
        missing = [t for t in SPECIAL_TOKENS if t not in self._ids]
        if missing:
            raise DataError(f"WordPiece vocabulary lacks the special tokens {', '.join(missing)}; BERT's "
                            f"vocab.txt has all of {', '.join(SPECIAL_TOKENS)}")
        self._clean = _CleanTable(self.tokenize_chinese_chars)
        self._specials = re.compile("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")")
        self._word_ids = functools.lru_cache(maxsize=_WORD_CACHE)(self._word_ids_uncached)

    @classmethod
    def from_vocab_file(cls, path, **options) -> "WordPieceTokenizer":
        """A BERT vocab.txt, read as transformers reads it (one token per line, universal newlines)."""
        try:
            with open(path, encoding="utf-8") as f:
                vocab = [line.rstrip("\n") for line in f]
        except FileNotFoundError:
            raise DataError(f"WordPiece vocabulary {path} does not exist") from None
        except (UnicodeDecodeError, IsADirectoryError) as e:
            raise DataError(f"{path} is not a UTF-8 vocab.txt: {e}") from None
        try:
            return cls(vocab, **options)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None

    @property
    def options(self) -> dict:
        """The BertTokenizer options (tokenizer_config.json fields) of this tokenizer."""
        return dict(do_lower_case=self.do_lower_case, strip_accents=self.strip_accents,
                    tokenize_chinese_chars=self.tokenize_chinese_chars)

    @property
    def bos_id(self) -> int:
        return self._ids[CLS]

    @property
    def eos_id(self) -> int:
        return self._ids[SEP]

    @property
    def pad_id(self) -> int:
        return self._ids[PAD]

    @property
    def unk_id(self) -> int:
        return self._ids[UNK]

    @property
    def mask_id(self) -> int:
        return self._ids[MASK]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.bos_id, self.pad_id, self.eos_id, self.unk_id, self.mask_id)

    def _word_ids_uncached(self, word: str) -> tuple[int, ...]:
        """Ids of one whitespace-free word: case/accents, punctuation split, WordPiece."""
        if self.do_lower_case:
            word = word.replace("Σ", "σ").lower()    # per character, as transformers: no final ς
            if self.strip_accents is not False:
                word = _strip_accents(word)
        elif self.strip_accents:
            word = _strip_accents(word)
        ids = []
        for piece in _split_on_punctuation(word):
            ids.extend(self._wordpiece(piece))
        return tuple(ids)

    def _wordpiece(self, piece: str) -> list[int]:
        """Greedy longest-match-first; [UNK] for the whole piece when some part has no match."""
        if len(piece) > MAX_INPUT_CHARS_PER_WORD:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(piece):
            for end in range(len(piece), start, -1):
                token_id = self._ids.get(piece[start:end] if start == 0 else "##" + piece[start:end])
                if token_id is not None:
                    break
            else:
                return [self.unk_id]
            ids.append(token_id)
            start = end
        return ids

    def _encode_one(self, text: str) -> list[int]:
        ids = []
        for i, segment in enumerate(self._specials.split(text)):
            if i % 2:                                  # a special token written in the text
                ids.append(self._ids[segment])
                continue
            segment = unicodedata.normalize("NFC", segment.translate(self._clean))
            for word in segment.split():
                ids.extend(self._word_ids(word))
        return ids

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """int32 ids per text, without [CLS]/[SEP]."""
        return [np.array(self._encode_one(text), dtype=np.int32) for text in texts]

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary entry of one id, e.g. '##ung' or '[MASK]'."""
        return self.vocab[token_id]

    def decode(self, ids) -> str:
        """Text of ids (`##` pieces joined to the previous one); the special tokens are dropped."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise DataError(f"token id {bad[0]} is outside this tokenizer's vocabulary of {self.vocab_size}")
        pieces = [self.vocab[i] for i in ids[~np.isin(ids, self.special_ids)].tolist()]
        return " ".join(pieces).replace(" ##", "").strip()
