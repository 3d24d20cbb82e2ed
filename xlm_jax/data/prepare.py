"""Data preparation, once per run: this process's shards -> tokenizer -> packed MLM blocks and
tokenized translation pairs, with the counts and sampling tables every process agrees on.
xlm_jax.data.pipeline turns the result (PretrainData) into batches.
"""
import dataclasses
from typing import Callable

import numpy as np

from xlm_jax.data.examples import pack_text
from xlm_jax.data.language_ranges import LanguageRangeTokenizer, base_vocab_size, vocab_rule
from xlm_jax.data.masking import token_counts
from xlm_jax.data.sampling import language_probs, sampling_table, temperature_probs
from xlm_jax.data.synthetic import mix_table, synthetic_fractions
from xlm_jax.data.text import EVAL_DIVISOR, MIN_SHARD_SENTENCES, CorpusText, Processes, read_text, tokenizer_text
from xlm_jax.data.tokenizers import (ByteTokenizer, Tokenizer, load_tokenizer, save_tokenizer, tokenizer_kind,
                                     tokenizer_path, train_sentencepiece)
from xlm_jax.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class PairTable:
    """One shard's translation pairs of one language pair, tokenized and ragged: side k (0 = src,
    1 = tgt) of pair i is tokens[offsets[2i + k]:offsets[2i + k + 1]]. Sides are cut to
    seq_len - 2 tokens, the most any layout keeps (examples.xlco_pair; tlm_example keeps less)."""
    tokens: np.ndarray    # int32 [T]
    offsets: np.ndarray   # int64 [2N + 1]

    def __len__(self) -> int:
        return (len(self.offsets) - 1) // 2

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        start, middle, end = self.offsets[2 * i:2 * i + 3]
        return self.tokens[start:middle], self.tokens[middle:end]


def pair_table(tokenizer: Tokenizer, pair: tuple[str, str], rows: list[tuple[str, str]], max_side: int) -> PairTable:
    """PairTable of (src, tgt) sentence pairs of the languages `pair`, each side encoded as its
    language's text (its own ids, with data.language_id_ranges) and cut to max_side tokens."""
    src, tgt = (tokenizer.for_language(lang).encode([row[k] for row in rows]) for k, lang in enumerate(pair))
    sides = [ids[:max_side] for both in zip(src, tgt) for ids in both]
    offsets = np.zeros(len(sides) + 1, np.int64)
    np.cumsum([len(ids) for ids in sides], out=offsets[1:])
    tokens = np.concatenate(sides).astype(np.int32, copy=False) if sides else np.zeros(0, np.int32)
    return PairTable(tokens, offsets)


NO_PAIRS = PairTable(np.zeros(0, np.int32), np.zeros(1, np.int64))   # a language pair of the other source only


@dataclasses.dataclass
class PretrainData:
    """This process's packed shards, and what every process agrees on."""
    languages: list[str]                 # sorted
    probs: list[float]                   # q_i aligned with languages
    counts: dict[str, int]               # n_i of q_i over all shards: training sentences or tokens (data.sampling_unit)
    tokenizer: Tokenizer
    num_shards: int                      # S
    shards: range                        # this process's
    train_blocks: list[list[np.ndarray]]  # [language][shard - shards.start] -> [N, seq_len] int32; a replicated
    eval_blocks: list[list[np.ndarray]]   # language has its whole blocks (one array) in each; [0, seq_len] if none
    evaluated: list[str]                 # languages with held-out text in every shard (replicated: at all)
    replicated: list[str] = dataclasses.field(default_factory=list)
    token_counts: np.ndarray | None = None   # [vocab] of all shards' training blocks, for data.mask_sample_alpha
    # Translation pairs, for the "tlm" and "pairs" streams (prepare_data(pairs=True)); all training.
    pairs: list[tuple[str, str]] = dataclasses.field(default_factory=list)   # (src, tgt), sorted
    pair_probs: list[float] = dataclasses.field(default_factory=list)       # q_i aligned with pairs
    pair_counts: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)   # over all shards
    train_pairs: list[list[PairTable]] = dataclasses.field(default_factory=list)   # [pair][shard - shards.start]
    replicated_pairs: list[tuple[str, str]] = dataclasses.field(default_factory=list)   # (its table in each)
    # Synthetic pairs (data.synthetic_pairs, xlm_jax.data.synthetic), aligned with `pairs`; empty without.
    synthetic_counts: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)   # over all shards
    synthetic_fractions: list[float] = dataclasses.field(default_factory=list)   # P(synthetic | language pair)
    synthetic_train_pairs: list[list[PairTable]] = dataclasses.field(default_factory=list)   # as train_pairs
    replicated_synthetic_pairs: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def prepare_data(config, workdir: str | None, log: Callable[[str], None] = print, *,
                 processes: Processes = Processes(), text: CorpusText | None = None,
                 pairs: bool = False) -> PretrainData:
    """Reads this process's shards (unless `text` is given), gets the tokenizer (process 0 trains
    it, or everyone loads it from workdir) and packs blocks; every process calls it together.
    With `pairs`, also tokenizes the translation pairs of its shards, for the TLM and pair
    streams (`text`, if given, must come from read_text(..., pairs=True))."""
    d = config.data
    if text is None:
        text = read_text(config, processes, log, pairs=pairs)
    if pairs:
        _check_pairs(text)
    languages = text.languages
    _check_language_embeddings(config, languages)
    counts, probs = text.sentence_probs()
    # Token counts need the tokenizer: one trained for a "tokens" run samples its training
    # sentences by these sentence-count q_i.
    tokenizer = processes.first("tokenizer ready",
                                lambda log: train_or_load_tokenizer(config, workdir, text, probs, log), log)

    def pack(lang: str, sentences: list[str]) -> np.ndarray:
        own = tokenizer.for_language(lang)   # its ids, and its own <s> </s> with data.shared_specials=False
        return pack_text(own.encode(sentences), d.seq_len, own, d.packing)

    def blocks(lang: str, shards: list[list[str]]) -> list[np.ndarray]:   # a replicated language is packed once
        if lang in text.replicated:
            return [pack(lang, shards[0])] * len(shards)
        return [pack(lang, x) for x in shards]

    train_blocks = [blocks(lang, text.train[lang]) for lang in languages]
    eval_blocks = [blocks(lang, text.held_out[lang]) for lang in languages]
    totals = _global_totals(text, train_blocks, eval_blocks, tokenizer, processes,
                            vocab_size=tokenizer.vocab_size if d.mask_sample_alpha else 0)
    if d.sampling_unit == "tokens":  # every token of the packed text but padding, <s> and </s> included
        counts = dict(zip(languages, totals["tokens"].tolist()))
        probs = language_probs(counts, d.alpha, d.language_caps, d.language_floors)
    bounds = "".join(f", {name} {value}" for name, value in (("caps", d.language_caps),
                                                             ("floors", d.language_floors)) if value)
    log(f"language sampling (alpha={d.alpha}, n_i in {d.sampling_unit}{bounds}):\n"
        + sampling_table(counts, probs, unit=d.sampling_unit, blocks=dict(zip(languages, totals["blocks"].tolist())),
                         examples=config.train.num_steps * config.train.batch_size))
    evaluated = [lang for lang in languages if text.held_out_sizes(lang).min() > 0]
    skipped = [lang for lang in languages if lang not in evaluated]
    if skipped:
        log(f"not evaluated (no held-out text: fewer than {EVAL_DIVISOR} sentences, or "
            f"data.eval_sentences_per_language=0): {', '.join(skipped)}")
    log(f"packed {totals['blocks'].sum():,} train and {totals['eval_blocks'].sum():,} eval blocks "
        f"of {d.seq_len} tokens in {len(languages)} languages over {text.plan.num_shards} shards")
    return PretrainData(languages=languages, probs=[probs[lang] for lang in languages], counts=counts,
                        tokenizer=tokenizer, num_shards=text.plan.num_shards, shards=text.shards,
                        train_blocks=train_blocks, eval_blocks=eval_blocks, evaluated=evaluated,
                        replicated=list(text.replicated), token_counts=totals.get("token_counts"),
                        **(_prepare_pairs(text, tokenizer, config, log) if pairs else {}))


def _check_pairs(text: CorpusText) -> None:
    if text.parallel is None:
        raise ValueError("prepare_data(pairs=True) needs the text read with read_text(..., pairs=True)")
    if not text.pairs and not (text.synthetic and text.synthetic.pairs):
        raise DataError(f"{text.origin} holds no translation pairs, which the TLM and pair streams read; "
                        "pairs come from <src>-<tgt>.tsv files (source<TAB>target a line) in data.corpus_dir "
                        "or data.files, from the <src>-<tgt> splits of a data.prepared_corpus, or from the "
                        "built-in gettext corpus (no data source set)")


def _check_language_embeddings(config, languages: list[str]) -> None:
    """XLM's language embeddings need a row per corpus language (language ids index data.languages)."""
    n = config.model.num_languages
    if 0 < n < len(languages):
        raise ConfigError(f"config field `model.num_languages`: got {n}, but the corpus has {len(languages)} "
                          f"languages ({', '.join(languages)}); set --config.model.num_languages="
                          f"{len(languages)} (or 0 for no language embeddings)")


def _prepare_pairs(text: CorpusText, tokenizer: Tokenizer, config, log) -> dict:
    """PretrainData's pair fields: n_i = translation pairs over all shards, real and synthetic
    (xlm_jax.data.synthetic), q_i by data.alpha as over languages, and this process's tokenized
    pairs of each source (a replicated pair's tokenized once)."""
    counts = dict(zip(text.pairs, text.pair_sentences.sum(1).tolist()))
    synthetic_counts = text.synthetic.counts() if text.synthetic else {}
    pairs = sorted(set(counts) | set(synthetic_counts))
    named = {f"{src}-{tgt}": counts.get((src, tgt), 0) + synthetic_counts.get((src, tgt), 0) for src, tgt in pairs}
    probs = temperature_probs(named, config.data.alpha)
    max_side = config.data.seq_len - 2

    def tables(source, pair) -> list[PairTable]:   # source: the corpus's pairs (text) or text.synthetic
        shards = source.parallel.get(pair)
        if shards is None:
            return [NO_PAIRS] * len(text.shards)
        if pair in source.replicated_pairs:
            return [pair_table(tokenizer, pair, shards[0], max_side)] * len(shards)
        return [pair_table(tokenizer, pair, rows, max_side) for rows in shards]

    real_and_synthetic = ", real and synthetic" if text.synthetic else ""
    log(f"language-pair sampling (alpha={config.data.alpha}, n_i in translation pairs{real_and_synthetic}; TLM and "
        f"pair streams):\n"
        + sampling_table(named, probs, unit="pairs", label="pair"))
    replicated = ", ".join(f"{src}-{tgt}" for src, tgt in text.replicated_pairs)
    note = (f"; replicated (fewer than {MIN_SHARD_SENTENCES} pairs in some shard, read whole by every process): "
            f"{replicated}" if replicated else "")
    log(f"translation pairs: {sum(counts.values()):,} in {len(counts)} language pairs over "
        f"{text.plan.num_shards} shards{note}")
    fields = dict(pairs=pairs, pair_probs=[probs[name] for name in named], pair_counts=counts,
                  train_pairs=[tables(text, pair) for pair in pairs], replicated_pairs=list(text.replicated_pairs))
    if text.synthetic is not None:
        fractions = synthetic_fractions(pairs, counts, synthetic_counts, config.data.synthetic_ratio)
        log("synthetic pairs (data.synthetic_pairs) in the TLM and pair streams:\n" + mix_table(
            pairs, counts, synthetic_counts, fields["pair_probs"], fractions, config.data))
        fields.update(synthetic_counts=synthetic_counts, synthetic_fractions=fractions,
                      synthetic_train_pairs=[tables(text.synthetic, pair) for pair in pairs],
                      replicated_synthetic_pairs=list(text.synthetic.replicated_pairs))
    return fields


def _global_totals(text: CorpusText, train_blocks, eval_blocks, tokenizer, processes: Processes,
                   vocab_size: int) -> dict[str, np.ndarray]:
    """Per language over all shards: "tokens" (non-padding, of the training blocks), "blocks",
    "eval_blocks"; and "token_counts" [vocab] of all training blocks when vocab_size > 0.
    Each process counts its shards; a replicated language, which every process holds, is
    counted once, after the sum."""
    shape = (3, len(text.languages))
    local, replicated = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    ids_local, ids_replicated = np.zeros(vocab_size, np.int64), np.zeros(vocab_size, np.int64)
    for i, lang in enumerate(text.languages):
        shards = [train_blocks[i][0]] if lang in text.replicated else train_blocks[i]
        held = [eval_blocks[i][0]] if lang in text.replicated else eval_blocks[i]
        into, ids = (replicated, ids_replicated) if lang in text.replicated else (local, ids_local)
        into[:, i] = (sum(int(np.count_nonzero(b != tokenizer.pad_id)) for b in shards),
                      sum(map(len, shards)), sum(map(len, held)))
        if vocab_size:
            ids += token_counts(shards, vocab_size)
    summed = processes.sum(np.concatenate([local.ravel(), ids_local])) + np.concatenate([replicated.ravel(),
                                                                                         ids_replicated])
    totals = dict(zip(("tokens", "blocks", "eval_blocks"), summed[:local.size].reshape(shape)))
    if vocab_size:
        totals["token_counts"] = summed[local.size:]
    return totals


def train_or_load_tokenizer(config, workdir, text: CorpusText, probs, log) -> Tokenizer:
    """The run's tokenizer: loaded from the workdir when there (a resume must not retrain, and
    init_from puts the imported model's SentencePiece or WordPiece tokenizer there), else trained."""
    if workdir and tokenizer_path(workdir):
        tokenizer, path = load_tokenizer(workdir), tokenizer_path(workdir)
        _check_language_ranges(config, tokenizer, path, text.languages)
        if tokenizer.vocab_size != config.model.vocab_size:
            raise ConfigError(f"config field `model.vocab_size`: got {config.model.vocab_size}, but the run's "
                              f"tokenizer {path} has {tokenizer.vocab_size} ids; set "
                              f"--config.model.vocab_size={tokenizer.vocab_size} or use a new workdir")
        kind = tokenizer_kind(tokenizer)     # a WordPiece file is only ever put there, never trained
        if not config.init_from and kind != "wordpiece" and kind != config.data.tokenizer:
            raise ConfigError(f"config field `data.tokenizer`: got {config.data.tokenizer!r}, but the run's "
                              f"tokenizer {path} is {kind!r}; set --config.data.tokenizer={kind} or use a new workdir")
        log(f"tokenizer: loaded {path} ({tokenizer.vocab_size} ids)")
        return tokenizer
    d = config.data
    vocab_size = config.model.vocab_size
    if d.language_id_ranges:   # the base is trained as usual, on every language's text, with P + 5 ids
        vocab_size = base_vocab_size(vocab_size, d.tokenizer, text.languages, d.shared_specials)
    if d.tokenizer == "bytes":   # config.validate (or base_vocab_size) has checked model.vocab_size
        tokenizer = ByteTokenizer()
        log(f"tokenizer: UTF-8 bytes ({tokenizer.vocab_size} ids)")
    else:
        tokenizer = _train_sentencepiece(config, text, probs, vocab_size)
        log(f"tokenizer: trained a {tokenizer.vocab_size}-id SentencePiece {d.tokenizer} model on "
            f"{d.tokenizer_sentences:,} sampled sentences")
    if d.language_id_ranges:
        tokenizer = LanguageRangeTokenizer(tokenizer, text.languages, shared_specials=d.shared_specials)
        specials = "" if d.shared_specials else " and <s> </s> <unk> <mask> (data.shared_specials=False)"
        log(f"tokenizer: each of {', '.join(text.languages)} has its own {tokenizer.range_size} ids{specials} "
            f"(data.language_id_ranges; {tokenizer.vocab_size} ids in all)")
    if workdir:
        log(f"tokenizer: saved {save_tokenizer(tokenizer, workdir)}")
    return tokenizer


def _train_sentencepiece(config, text: CorpusText, probs, vocab_size: int) -> Tokenizer:
    """SentencePiece of `vocab_size` ids on the corpus; with language id ranges, that is the base
    every language's range copies, and its errors say so."""
    d = config.data
    try:
        return train_sentencepiece(tokenizer_text(text, probs, d.tokenizer_sentences), probs, vocab_size,
                                   input_sentence_size=d.tokenizer_sentences,
                                   character_coverage=d.character_coverage, byte_fallback=d.byte_fallback,
                                   seed=config.train.seed, model_type=d.tokenizer)
    except DataError as e:
        if not d.language_id_ranges:
            raise
        n = len(text.languages)
        raise DataError(f"data.language_id_ranges: the base SentencePiece model, which each language's range "
                        f"copies, gets P + 5 = {vocab_size} of model.vocab_size={config.model.vocab_size} ids "
                        f"(model.vocab_size = {vocab_rule(n, d.shared_specials)}); for the base: {e}") from None


def _check_language_ranges(config, tokenizer: Tokenizer, path, languages: list[str]) -> None:
    """A loaded tokenizer has id ranges exactly when the config asks for them, for the corpus's languages."""
    if bool(tokenizer.languages) != config.data.language_id_ranges:
        has = "gives each language its own ids" if tokenizer.languages else "shares its ids between languages"
        raise ConfigError(f"config field `data.language_id_ranges`: got {config.data.language_id_ranges}, but "
                          f"the run's tokenizer {path} {has}; set --config.data.language_id_ranges="
                          f"{bool(tokenizer.languages)} or use a new workdir")
    if tokenizer.languages and tokenizer.shared_specials != config.data.shared_specials:
        raise ConfigError(f"config field `data.shared_specials`: got {config.data.shared_specials}, but the run's "
                          f"tokenizer {path} has {'shared' if tokenizer.shared_specials else 'per-language'} "
                          f"specials; set --config.data.shared_specials={tokenizer.shared_specials} or use a new "
                          "workdir")
    if tokenizer.languages and tuple(tokenizer.languages) != tuple(languages):
        raise DataError(f"the run's tokenizer {path} has id ranges for {', '.join(tokenizer.languages)}, but the "
                        f"corpus has {', '.join(languages)}; train on the corpus it was made for, or use a new "
                        "workdir")
