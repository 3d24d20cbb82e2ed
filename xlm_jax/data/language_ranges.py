"""Each language its own id range (`data.language_id_ranges`): no shared vocabulary, no anchor points.

"Emerging Cross-lingual Structure in Pretrained Language Models" (Wu, Conneau et al., 2020)
removes the anchor points a shared vocabulary gives (the same id for "Paris" in English and
French text) by giving every language ids of its own. LanguageRangeTokenizer does that around
an ordinary base tokenizer (SentencePiece or bytes, fairseq layout, trained on all languages'
text as usual): the specials `<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3 and `<mask>` (id 4 + L * P)
stay shared, and base id b >= 4 of language i becomes 4 + i * P + (b - 4), P = the base's
vocab_size - 5 ordinary ids. So vocab_size = 5 + L * P and the ranges never overlap.

With `data.shared_specials=False` (Dufter & Schuetze 2020's "shift special tokens") the
languages share no token but `<pad>`, which attention never sees: the first language keeps
the ids above, each other language i gets its own `<s> </s> <unk> <mask>` after the shared
layout, ids 5 + L * P + 4 * (i - 1) + (0, 1, 2, 3). So vocab_size = 1 + L * (P + 4).

Text is encoded per language (`for_language(name).encode`, with that language's specials);
ids of any language, or a TLM pair mixing two, decode back. The run directory keeps the
base's own file plus tokenizer.ranges.json.
"""
import json

import numpy as np

from xlm_jax.errors import ConfigError, DataError

RANGES_FILE = "tokenizer.ranges.json"   # {"format", "base", "languages", "shared_specials"} beside the base's file
_FORMAT = "xlm_jax.language_ranges/1"
NUM_SPECIALS = 5                        # <s> <pad> </s> <unk> ... <mask>: shared by every language
OWN_SPECIALS = 4                        # <s> </s> <unk> <mask> per language with data.shared_specials=False
BYTE_RANGE = 256                        # a byte base: P = the 256 byte values


def vocab_rule(languages="L", shared_specials: bool = True, per_language="P") -> str:
    """How model.vocab_size follows from the ids per language, for error messages."""
    if shared_specials:
        return f"5 + {languages} x {per_language} (the 5 shared specials and {per_language} ids per language)"
    return (f"1 + {languages} x ({per_language} + 4) (the shared <pad>, and per language {per_language} ids and "
            "its own <s> </s> <unk> <mask>)")


def base_vocab_size(vocab_size: int, tokenizer: str, languages, shared_specials: bool = True) -> int:
    """The base tokenizer's vocab_size for a model of `vocab_size` ids split over `languages`:
    P = (vocab_size - 5) / L (own specials: (vocab_size - 1) / L - 4) must be whole (bytes: 256),
    so the model has exactly the ids the tokenizer gives. ConfigError naming model.vocab_size,
    with the sizes that fit, otherwise."""
    languages = list(languages)
    n = len(languages)
    fixed, per_extra = (NUM_SPECIALS, 0) if shared_specials else (1, OWN_SPECIALS)   # vocab = fixed + n (P + extra)
    per_language = BYTE_RANGE if tokenizer == "bytes" else (vocab_size - fixed) // n - per_extra
    size_of = lambda p: fixed + n * (p + per_extra)   # noqa: E731
    if vocab_size != size_of(per_language) or per_language < 3:   # 3: a base of 8 ids at least, as config.validate asks
        if tokenizer == "bytes":
            hint = f"set --config.model.vocab_size={size_of(BYTE_RANGE)} (P = 256 bytes)"
        else:
            sizes = [size_of(p) for p in (per_language, per_language + 1) if p >= 3] or [size_of(3)]
            hint = "set --config.model.vocab_size=" + " or ".join(
                f"{size} ({(size - fixed) // n - per_extra} ids per language)" for size in sizes)
        raise ConfigError(f"config field `model.vocab_size`: got {vocab_size}, but data.language_id_ranges "
                          f"gives each of the {n} languages ({', '.join(languages)}) the same number P of ids, "
                          f"so model.vocab_size = {vocab_rule(n, shared_specials)}; {hint}")
    return per_language + NUM_SPECIALS


RANDOM_TOKEN_LANGUAGES = ("same", "any")   # data.random_token_language


def check_config(config) -> None:
    """The data.language_id_ranges fields (data/checks.py calls this): per-language ids split
    model.vocab_size over a tokenizer the run trains itself; the split is checked here when
    data.languages names the languages, else once the corpus is read."""
    d = config.data

    def require(ok: bool, field: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"config field `{field}`: {message}")

    for field in ("language_id_ranges", "shared_specials"):
        require(isinstance(d[field], bool), f"data.{field}", f"got {d[field]!r}; must be True or False")
    require(d.random_token_language in RANDOM_TOKEN_LANGUAGES, "data.random_token_language",
            f"got {d.random_token_language!r}; allowed values: {', '.join(RANDOM_TOKEN_LANGUAGES)}")
    require(d.language_id_ranges or d.shared_specials, "data.shared_specials",
            "got False, but only languages with ids of their own can have specials of their own; set "
            "--config.data.language_id_ranges=True too, or leave shared_specials=True")
    if not d.language_id_ranges:
        return
    require(not config.init_from and not d.extend_vocab_pieces, "data.language_id_ranges",
            f"got True with init_from={config.init_from!r}, data.extend_vocab_pieces={d.extend_vocab_pieces}: "
            "per-language id ranges need a tokenizer the run trains from scratch, but an imported model "
            "brings its shared vocabulary; drop those, or set --config.data.language_id_ranges=False")
    if d.tokenizer == "bytes":
        fixed, per_language = (NUM_SPECIALS, BYTE_RANGE) if d.shared_specials else (1, BYTE_RANGE + OWN_SPECIALS)
        require((config.model.vocab_size - fixed) % per_language == 0, "model.vocab_size",
                f"got {config.model.vocab_size}, but data.tokenizer=\"bytes\" with data.language_id_ranges has "
                f"{vocab_rule('L', d.shared_specials, 256)} ids for L languages ({fixed + 2 * per_language} for "
                f"2, {fixed + 3 * per_language} for 3)")
    languages = sorted({x.strip() for x in d.languages.split(",") if x.strip()})
    if languages:
        base_vocab_size(config.model.vocab_size, d.tokenizer, languages, d.shared_specials)


class LanguageRangeTokenizer:
    """A base tokenizer's ids, one copy per language (see the module docstring).

    The tokenizer itself has no language, so it encodes nothing: `for_language(name)` gives the
    one that encodes `name`'s text (the same ids and tokenizer otherwise, `language` set, and
    its own `<s> </s> <unk> <mask>` when the specials are not shared). Decoding and pieces work
    on every language's ids; `special_ids` lists every language's specials.
    """

    def __init__(self, base, languages, *, language: str | None = None, shared_specials: bool = True):
        self.base, self.languages, self.language = base, tuple(languages), language
        self.shared_specials = shared_specials
        if not self.languages or len(set(self.languages)) != len(self.languages):
            raise ValueError(f"LanguageRangeTokenizer needs distinct languages, got {self.languages}")
        if tuple(base.special_ids) != (0, 1, 2, 3, base.vocab_size - 1):
            raise ValueError("the base tokenizer must have the fairseq layout (<s> <pad> </s> <unk> first, "
                             "<mask> last): SentencePiece or bytes")
        self.range_size = base.vocab_size - NUM_SPECIALS                 # P
        self.ordinary_ids = (4, 4 + len(self.languages) * self.range_size)   # [first, end) of every range
        own = 0 if shared_specials else OWN_SPECIALS * (len(self.languages) - 1)
        self.vocab_size = self.ordinary_ids[1] + 1 + own
        self.pad_id = base.pad_id
        index = 0 if language is None else self.languages.index(language)
        self.bos_id, self.eos_id, self.unk_id, self.mask_id = self.specials_of(index)
        shared = (self.bos_id, self.pad_id, self.eos_id, self.unk_id, self.ordinary_ids[1])
        self.special_ids = shared + tuple(range(self.ordinary_ids[1] + 1, self.vocab_size))
        self._table = None if language is None else self._from_base(index)

    def specials_of(self, index: int) -> tuple[int, int, int, int]:
        """(<s>, </s>, <unk>, <mask>) of language `index`: the shared ones, or its own."""
        if self.shared_specials or index == 0:
            return 0, 2, 3, self.ordinary_ids[1]
        first = self.ordinary_ids[1] + 1 + OWN_SPECIALS * (index - 1)
        return first, first + 1, first + 2, first + 3

    def for_language(self, language: str) -> "LanguageRangeTokenizer":
        """The tokenizer that encodes `language`'s text into its range."""
        if language not in self.languages:
            raise DataError(f"language {language!r} has no id range in this tokenizer; its languages: "
                            f"{', '.join(self.languages)} (the corpus it was made for, data.language_id_ranges)")
        return LanguageRangeTokenizer(self.base, self.languages, language=language,
                                      shared_specials=self.shared_specials)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """int32 ids per text in this language's range (no `<s>`/`</s>` added)."""
        if self.language is None:
            raise DataError("this tokenizer gives each language its own ids (data.language_id_ranges), so text "
                            "needs its language: use tokenizer.for_language(name).encode(texts), name one of "
                            f"{', '.join(self.languages)}")
        return [self._table[ids] for ids in self.base.encode(texts)]

    def from_base(self, base_ids) -> np.ndarray:
        """This language's ids of base tokenizer ids (the same pieces in its range)."""
        if self.language is None:
            raise DataError("from_base needs a language: tokenizer.for_language(name).from_base(ids)")
        return self._table[np.asarray(base_ids)]

    def _from_base(self, index: int) -> np.ndarray:
        """int32 [base vocab]: base id -> id of language `index` (specials: its own or the shared ones)."""
        table = np.arange(self.base.vocab_size, dtype=np.int32) + np.int32(index * self.range_size)
        bos, eos, unk, mask = self.specials_of(index)
        table[[0, 1, 2, 3, -1]] = bos, self.pad_id, eos, unk, mask
        return table

    def language_index(self, ids) -> np.ndarray:
        """int64 [...]: the language each id belongs to (its range, or whose own special it is);
        -1 for a shared special. DataError outside the vocabulary."""
        ids = np.asarray(ids, dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise DataError(f"token id {bad.flat[0]} is outside this tokenizer's vocabulary of {self.vocab_size}")
        first, end = self.ordinary_ids
        own = np.where(ids > end, (ids - end - 1) // OWN_SPECIALS + 1, -1)   # languages 1.. own specials
        if not self.shared_specials:   # language 0's specials are the shared layout's, <pad> excepted
            own = np.where(np.isin(ids, (0, 2, 3, end)), 0, own)
        return np.where((ids >= first) & (ids < end), (ids - first) // self.range_size, own)

    def base_ids(self, ids) -> np.ndarray:
        """The base tokenizer's ids of these ids (of any languages); DataError outside the vocabulary."""
        ids = np.asarray(ids, dtype=np.int64)
        self.language_index(ids)   # DataError outside the vocabulary
        first, end = self.ordinary_ids
        roles = np.array([self.base.bos_id, self.base.eos_id, self.base.unk_id, self.base.mask_id])
        base = np.where(ids < first, ids, (ids - first) % self.range_size + first)
        base = np.where(ids == end, self.base.mask_id, base)
        return np.where(ids > end, roles[(ids - end - 1) % OWN_SPECIALS], base)

    def own_mask_ids(self) -> np.ndarray:
        """int32 [vocab_size]: the <mask> of each id's language (the shared one for shared specials),
        so masking uses a token's own language's <mask>."""
        languages = self.language_index(np.arange(self.vocab_size))
        masks = np.array([self.specials_of(i)[3] for i in range(len(self.languages))], np.int32)
        return np.where(languages >= 0, masks[np.maximum(languages, 0)], self.mask_id).astype(np.int32)

    def language_of(self, token_id: int) -> str | None:
        """The language whose range (or own special) holds `token_id`; None for a shared special."""
        index = int(self.language_index(token_id))
        return None if index < 0 else self.languages[index]

    def decode(self, ids) -> str:
        """Text of ids of any languages (a TLM pair mixes two); specials are dropped, as the base does."""
        return self.base.decode(self.base_ids(np.asarray(ids).reshape(-1)))

    def id_to_piece(self, token_id: int) -> str:
        """The base piece with its language, e.g. 'de:▁Haus' (and 'de:<s>' for its own <s>); shared
        specials by their names."""
        piece = self.base.id_to_piece(int(self.base_ids(token_id)))
        language = self.language_of(token_id)
        return piece if language is None else f"{language}:{piece}"


def ranges_json(tokenizer: LanguageRangeTokenizer, base_kind: str) -> bytes:
    """tokenizer.ranges.json: the languages in range order, what the base file is, whether the
    specials are shared."""
    return json.dumps({"format": _FORMAT, "base": base_kind, "languages": list(tokenizer.languages),
                       "shared_specials": tokenizer.shared_specials}, ensure_ascii=False).encode("utf-8")


def read_ranges(path, base, base_kind: str) -> LanguageRangeTokenizer:
    """The LanguageRangeTokenizer tokenizer.ranges.json describes around the already loaded base
    (a file without "shared_specials", from before the option, has shared ones)."""
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
        shared = state.get("shared_specials", True)
        if not isinstance(shared, bool):
            raise ValueError("\"shared_specials\" is not true or false")
        return LanguageRangeTokenizer(base, languages, shared_specials=shared)
    except (ValueError, KeyError, TypeError) as e:   # JSON and UTF-8 errors are ValueErrors
        raise DataError(f"{path} is not an xlm_jax language-range file ({e}); delete the run's tokenizer files "
                        "to make a new tokenizer, or write them with save_tokenizer") from None
