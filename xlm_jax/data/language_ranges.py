"""Each language its own id range (`data.language_id_ranges`): no shared vocabulary, no anchor points.

"Emerging Cross-lingual Structure in Pretrained Language Models" (Wu, Conneau et al., 2020)
removes the anchor points a shared vocabulary gives (the same id for "Paris" in English and
French text) by giving every language ids of its own. LanguageRangeTokenizer does that around
an ordinary base tokenizer (SentencePiece or bytes, fairseq layout, trained on all languages'
text as usual): the specials `<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3 and `<mask>` (the last id)
stay shared, and base id b >= 4 of language i becomes 4 + i * P + (b - 4), P = the base's
vocab_size - 5 ordinary ids. So vocab_size = 5 + L * P and the ranges never overlap.

Text is encoded per language (`for_language(name).encode`); ids of any language, or a TLM pair
mixing two, decode back. The run directory keeps the base's own file plus tokenizer.ranges.json.
"""
import json

import numpy as np

from xlm_jax.errors import ConfigError, DataError

RANGES_FILE = "tokenizer.ranges.json"   # {"format", "base", "languages"} beside the base's own file
_FORMAT = "xlm_jax.language_ranges/1"
NUM_SPECIALS = 5                        # <s> <pad> </s> <unk> ... <mask>: shared by every language
BYTE_RANGE = 256                        # a byte base: P = the 256 byte values


def base_vocab_size(vocab_size: int, tokenizer: str, languages) -> int:
    """The base tokenizer's vocab_size for a model of `vocab_size` ids split over `languages`:
    P = (vocab_size - 5) / L must be whole (bytes: 256), so the model has exactly the ids the
    tokenizer gives. ConfigError naming model.vocab_size, with the sizes that fit, otherwise."""
    languages = list(languages)
    n = len(languages)
    per_language = BYTE_RANGE if tokenizer == "bytes" else (vocab_size - NUM_SPECIALS) // n
    fits = NUM_SPECIALS + n * per_language
    if vocab_size != fits or per_language < 3:   # 3: a base of 8 ids at least, as config.validate asks
        if tokenizer == "bytes":
            hint = f"set --config.model.vocab_size={fits} (5 + {n} x 256 bytes)"
        else:
            sizes = ([NUM_SPECIALS + n * p for p in (per_language, per_language + 1) if p >= 3]
                     or [NUM_SPECIALS + 3 * n])
            hint = "set --config.model.vocab_size=" + " or ".join(
                f"{size} ({(size - NUM_SPECIALS) // n} ids per language)" for size in sizes)
        raise ConfigError(f"config field `model.vocab_size`: got {vocab_size}, but data.language_id_ranges "
                          f"gives each of the {n} languages ({', '.join(languages)}) the same number P of ids "
                          f"besides the 5 shared specials, so model.vocab_size = 5 + {n} x P; {hint}")
    return per_language + NUM_SPECIALS


class LanguageRangeTokenizer:
    """A base tokenizer's ids, one copy per language (see the module docstring).

    The tokenizer itself has no language, so it encodes nothing: `for_language(name)` gives the
    one that encodes `name`'s text (the same ids and tokenizer otherwise, `language` set).
    Decoding and pieces work on every language's ids.
    """

    def __init__(self, base, languages, *, language: str | None = None):
        self.base, self.languages, self.language = base, tuple(languages), language
        if not self.languages or len(set(self.languages)) != len(self.languages):
            raise ValueError(f"LanguageRangeTokenizer needs distinct languages, got {self.languages}")
        if tuple(base.special_ids) != (0, 1, 2, 3, base.vocab_size - 1):
            raise ValueError("the base tokenizer must have the fairseq layout (<s> <pad> </s> <unk> first, "
                             "<mask> last): SentencePiece or bytes")
        self.range_size = base.vocab_size - NUM_SPECIALS                 # P
        self.vocab_size = NUM_SPECIALS + len(self.languages) * self.range_size
        self.bos_id, self.pad_id, self.eos_id, self.unk_id = base.bos_id, base.pad_id, base.eos_id, base.unk_id
        self.mask_id = self.vocab_size - 1
        self.special_ids = (self.bos_id, self.pad_id, self.eos_id, self.unk_id, self.mask_id)
        self._table = None if language is None else self._from_base(self.languages.index(language))

    def for_language(self, language: str) -> "LanguageRangeTokenizer":
        """The tokenizer that encodes `language`'s text into its range."""
        if language not in self.languages:
            raise DataError(f"language {language!r} has no id range in this tokenizer; its languages: "
                            f"{', '.join(self.languages)} (the corpus it was made for, data.language_id_ranges)")
        return LanguageRangeTokenizer(self.base, self.languages, language=language)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """int32 ids per text in this language's range (no `<s>`/`</s>` added)."""
        if self.language is None:
            raise DataError("this tokenizer gives each language its own ids (data.language_id_ranges), so text "
                            "needs its language: use tokenizer.for_language(name).encode(texts), name one of "
                            f"{', '.join(self.languages)}")
        return [self._table[ids] for ids in self.base.encode(texts)]

    def _from_base(self, index: int) -> np.ndarray:
        """int32 [base vocab]: base id -> id of language `index` (specials shared)."""
        table = np.arange(self.base.vocab_size, dtype=np.int32) + np.int32(index * self.range_size)
        table[:4] = np.arange(4)
        table[-1] = self.mask_id
        return table

    def base_ids(self, ids) -> np.ndarray:
        """The base tokenizer's ids of these ids (of any languages); DataError outside the vocabulary."""
        ids = np.asarray(ids, dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise DataError(f"token id {bad.flat[0]} is outside this tokenizer's vocabulary of {self.vocab_size}")
        base = (ids - 4) % self.range_size + 4
        return np.where(ids < 4, ids, np.where(ids == self.mask_id, self.base.mask_id, base))

    def language_of(self, token_id: int) -> str | None:
        """The language whose range holds `token_id`; None for a special."""
        self.base_ids(token_id)   # DataError outside the vocabulary
        if token_id in self.special_ids:
            return None
        return self.languages[(token_id - 4) // self.range_size]

    def decode(self, ids) -> str:
        """Text of ids of any languages (a TLM pair mixes two); specials are dropped, as the base does."""
        return self.base.decode(self.base_ids(np.asarray(ids).reshape(-1)))

    def id_to_piece(self, token_id: int) -> str:
        """The base piece with its language, e.g. 'de:▁Haus'; specials by their names."""
        piece = self.base.id_to_piece(int(self.base_ids(token_id)))
        language = self.language_of(token_id)
        return piece if language is None else f"{language}:{piece}"


def ranges_json(tokenizer: LanguageRangeTokenizer, base_kind: str) -> bytes:
    """tokenizer.ranges.json: the languages in range order and what the base file is."""
    return json.dumps({"format": _FORMAT, "base": base_kind, "languages": list(tokenizer.languages)},
                      ensure_ascii=False).encode("utf-8")


def read_ranges(path, base, base_kind: str) -> LanguageRangeTokenizer:
    """The LanguageRangeTokenizer tokenizer.ranges.json describes around the already loaded base."""
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"no \"format\": \"{_FORMAT}\"")
        languages = state["languages"]
        if not isinstance(languages, list) or not languages or not all(isinstance(x, str) for x in languages):
            raise ValueError("\"languages\" is not a list of language names")
        if state.get("base") != base_kind:
            raise ValueError(f"it names a {state.get('base')!r} base, but the tokenizer file beside it is "
                             f"{base_kind!r}")
        return LanguageRangeTokenizer(base, languages)
    except (ValueError, KeyError, TypeError) as e:   # JSON and UTF-8 errors are ValueErrors
        raise DataError(f"{path} is not an xlm_jax language-range file ({e}); delete the run's tokenizer files "
                        "to make a new tokenizer, or write them with save_tokenizer") from None
