"""The training and held-out text of this process's shards, and the counts all processes agree on.

A process reads only its shards (xlm_jax.data.shards, .corpus). The sentence counts of
every shard are summed over the processes, so each one knows n_i, q_i and the rules below
whatever the process count; they depend on the data and S = `data.shards` only.

- Held-out text: shard s keeps its last ceil(E / S) sentences (E =
  `data.eval_sentences_per_language`), at most a tenth of them, for evaluation; eval rows
  come from their own shard as training rows do.
- Replicated languages: a language with fewer than 10 sentences in some shard (too few to
  hold out a tenth or to pack well) is read whole by every process, and every shard samples
  from all of it; its last min(E, n / 10) sentences are held out.
- Translation pairs (read_text(pairs=True), for the TLM and pair streams): all of a shard's
  pairs are training pairs; a language pair with fewer than 10 pairs in some shard is
  replicated as a small language is. Synthetic pairs (data.synthetic_pairs,
  xlm_jax.data.synthetic) are read the same way, as a source of their own.
- The tokenizer's training sample: the first training sentences of each of up to 64
  evenly spread shards of every language (all of a replicated one), read by whichever
  process trains the tokenizer, so the vocabulary does not depend on the process count.
"""
import dataclasses
import math
from typing import Callable

import numpy as np

from xlm_jax.data import synthetic
from xlm_jax.data.corpus import CorpusPlan, check_counts, plan_corpus, plan_pairs, plan_synthetic_pairs, read_shards
from xlm_jax.data.sampling import language_probs
from xlm_jax.data.shards import check_shards, owned_shards
from xlm_jax.data.sources import Reader
from xlm_jax.errors import ConfigError, DataError

MIN_SHARD_SENTENCES = 10     # fewer in some shard: the language is replicated
EVAL_DIVISOR = 10            # hold out at most a tenth of a shard (or of a replicated language)
TOKENIZER_SHARDS = 64        # shards the tokenizer's sample comes from, at most
_POOL = 2                    # sampled sentences per tokenizer training draw, so most draws differ
_ERROR_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process among the run's, and the two collectives data preparation needs.

    The defaults are one process alone; parallel/multihost.py's this_process() gives jax's,
    tests stand-ins. allgather: int64 array -> [count, *shape], the same on every process.
    zero_first(done, task): task(log) on process 0, then, once it is done, task(silent log)
    on the others.
    """
    index: int = 0
    count: int = 1
    allgather: Callable[[np.ndarray], np.ndarray] | None = None
    zero_first: Callable | None = None

    def sum(self, x) -> np.ndarray:
        """x summed over the processes (each fills in what it read)."""
        x = np.asarray(x, np.int64)
        return x if self.count == 1 else np.asarray(self.allgather(x)).sum(0)

    def first(self, done: str, task, log):
        return task(log) if self.zero_first is None else self.zero_first(done, task)

    def agreed(self, task):
        """task() on every process; an xlm_jax error on any of them is raised on all, so that
        none waits forever for the others (a bad line is seen by its shard's process only)."""
        try:
            result, error = task(), None
        except (DataError, ConfigError) as e:
            result, error = None, e
        if self.count > 1:
            message = np.zeros(1 + _ERROR_BYTES, np.int64)
            if error is not None:
                text = str(error).encode("utf-8")[:_ERROR_BYTES]
                message[0] = 1 if isinstance(error, DataError) else 2
                message[1:1 + len(text)] = np.frombuffer(text, np.uint8)
            gathered = np.asarray(self.allgather(message))
            failed = [index for index, row in enumerate(gathered) if row[0]]
            if failed and failed[0] != self.index:
                text = bytes(gathered[failed[0], 1:].astype(np.uint8)).rstrip(b"\0").decode("utf-8", "replace")
                raise (DataError if gathered[failed[0], 0] == 1 else ConfigError)(f"process {failed[0]}: {text}")
        if error is not None:
            raise error
        return result


@dataclasses.dataclass
class PairText:
    """The translation pairs of one pair source beside the corpus (data.synthetic_pairs), laid out
    as CorpusText's: the language pairs with pairs, every shard's counts, this process's pairs."""
    pairs: list[tuple[str, str]]                 # sorted
    pair_sentences: np.ndarray                   # int64 [pairs, S]
    replicated_pairs: list[tuple[str, str]]
    parallel: dict[tuple[str, str], list[list[tuple[str, str]]]]   # per own shard (replicated: all in each)

    def counts(self) -> dict[tuple[str, str], int]:
        return dict(zip(self.pairs, self.pair_sentences.sum(1).tolist()))


@dataclasses.dataclass
class CorpusText:
    plan: CorpusPlan
    shards: range                          # this process's
    languages: list[str]                   # with text, sorted
    sentences: np.ndarray                  # int64 [languages, S]: every shard's sentences, from all processes
    replicated: list[str]
    train: dict[str, list[list[str]]]      # language -> per own shard (a replicated one: all of it in each)
    held_out: dict[str, list[list[str]]]
    origin: str
    reader: Reader                         # reads other shards for the tokenizer's sample
    pairs: list[tuple[str, str]] = dataclasses.field(default_factory=list)   # (src, tgt) with pairs, sorted
    pair_sentences: np.ndarray | None = None   # int64 [pairs, S]: every shard's translation pairs
    replicated_pairs: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    # (src, tgt) -> per own shard (a replicated pair: all of it in each); None unless read_text(pairs=True)
    parallel: dict[tuple[str, str], list[list[tuple[str, str]]]] | None = None
    synthetic: PairText | None = None      # data.synthetic_pairs, with read_text(pairs=True)

    def held_out_sizes(self, lang: str) -> np.ndarray:
        """Held-out sentences per shard; for a replicated language, [all of them]."""
        n = self.sentences[self.languages.index(lang)]
        if lang in self.replicated:
            return np.array([min(self.plan.data_config.eval_sentences_per_language, n.sum() // EVAL_DIVISOR)])
        per_shard = -(-self.plan.data_config.eval_sentences_per_language // self.plan.num_shards)
        return np.minimum(per_shard, n // EVAL_DIVISOR)

    def own_train(self, lang: str) -> list[str]:
        """The training sentences this process holds of a language (all of a replicated one's)."""
        return _flat(self.train[lang][:1] if lang in self.replicated else self.train[lang])

    def own_held_out(self, lang: str) -> list[str]:
        """The held-out sentences this process holds of a language (all of a replicated one's)."""
        return _flat(self.held_out[lang][:1] if lang in self.replicated else self.held_out[lang])

    def train_sentences(self, lang: str) -> int:
        """n_i in sentences: training sentences over all shards."""
        return int(self.sentences[self.languages.index(lang)].sum() - self.held_out_sizes(lang).sum())

    def sentence_probs(self) -> tuple[dict[str, int], dict[str, float]]:
        """(n_i in training sentences, q_i from them by data.alpha, caps and floors): what
        tokenizer training samples by, and the run too unless data.sampling_unit="tokens"."""
        d = self.plan.data_config
        counts = {lang: self.train_sentences(lang) for lang in self.languages}
        return counts, language_probs(counts, d.alpha, d.language_caps, d.language_floors)


def _flat(shards: list[list[str]]) -> list[str]:
    return [line for lines in shards for line in lines]


def read_text(config, processes: Processes = Processes(), log: Callable[[str], None] = print, *,
              pairs: bool = False) -> CorpusText:
    """This process's shards of the corpus, split into training and held-out text (see the module
    doc); with `pairs`, also the translation pairs of its shards (CorpusText.parallel)."""
    d = config.data
    num_shards = check_shards(config, processes.count)
    own = owned_shards(processes.index, processes.count, num_shards)
    reader = Reader.from_config(d)
    plan = plan_corpus(d, num_shards)
    synthetic_plan = plan_synthetic_pairs(d, num_shards) if pairs else None   # its files exist, before reading
    corpora, unit_counts = processes.agreed(lambda: read_shards(plan, own, reader))
    candidates = plan_pairs(plan)
    local = np.zeros((len(plan.languages) + len(candidates), num_shards), np.int64)
    for s, corpus in corpora.items():
        local[:, s] = ([len(corpus.mono.get(lang, ())) for lang in plan.languages]
                       + [len(corpus.parallel.get(pair, ())) for pair in candidates])
    table = processes.sum(np.concatenate([unit_counts.ravel(), local.ravel()]))
    unit_counts, sentences = table[:unit_counts.size].reshape(unit_counts.shape), table[unit_counts.size:]
    sentences = sentences.reshape(local.shape)
    sentences, pair_sentences = sentences[:len(plan.languages)], sentences[len(plan.languages):]
    languages, origin = check_counts(plan, unit_counts, dict(zip(plan.languages, sentences.sum(1))), reader)
    sentences = sentences[[plan.languages.index(lang) for lang in languages]]
    replicated = [lang for lang, row in zip(languages, sentences) if row.min() < MIN_SHARD_SENTENCES]
    with_pairs = [i for i, row in enumerate(pair_sentences) if row.sum() > 0]
    pair_names, pair_sentences = [candidates[i] for i in with_pairs], pair_sentences[with_pairs]
    replicated_pairs = [pair for pair, row in zip(pair_names, pair_sentences) if row.min() < MIN_SHARD_SENTENCES]
    if (replicated or (pairs and replicated_pairs)) and len(own) < num_shards:
        others = [s for s in range(num_shards) if s not in own]
        corpora.update(read_shards(plan, others, reader.quiet(), languages=set(replicated),
                                   pairs=set(replicated_pairs) if pairs else None)[0])
    text = CorpusText(plan, own, languages, sentences, replicated, {}, {}, origin, reader,
                      pair_names, pair_sentences, replicated_pairs)
    if pairs:
        text.parallel = {pair: _shard_pairs(corpora, pair, own, num_shards, pair in replicated_pairs)
                         for pair in pair_names}
    if synthetic_plan is not None:
        text.synthetic = _read_pair_source(synthetic_plan, processes, own, languages, reader)
    for lang in languages:
        sizes = text.held_out_sizes(lang)
        if lang in replicated:
            whole = [line for s in range(num_shards) for line in corpora[s].mono.get(lang, ())]
            cut = len(whole) - int(sizes[0])
            text.train[lang], text.held_out[lang] = [whole[:cut]] * len(own), [whole[cut:]] * len(own)
        else:
            shards = [corpora[s].mono[lang] for s in own]
            cuts = [len(lines) - int(sizes[s]) for s, lines in zip(own, shards)]
            text.train[lang] = [lines[:cut] for lines, cut in zip(shards, cuts)]
            text.held_out[lang] = [lines[cut:] for lines, cut in zip(shards, cuts)]
    log(f"corpus: {origin}")
    read = "the built-in corpus, whole" if plan.gettext else f"{reader.bytes_read:,} bytes of text"
    log(f"data shards: {num_shards}; process {processes.index} of {processes.count} read shards "
        f"{own.start}-{own.stop - 1} ({read})"
        + (f"; replicated (fewer than {MIN_SHARD_SENTENCES} sentences in some shard, read whole by every "
           f"process): {', '.join(replicated)}" if replicated else ""))
    return text


def _read_pair_source(plan: CorpusPlan, processes: Processes, own: range, languages: list[str],
                      reader: Reader) -> PairText:
    """A plan of pair files only (corpus.plan_synthetic_pairs) read as the corpus's pairs are: this
    process's shards, counts agreed by all, a file without pairs dropped (or raised) by the reader's
    policy, language pairs with fewer than MIN_SHARD_SENTENCES pairs in some shard replicated."""
    synthetic.check_languages(sorted({unit.langs for unit in plan.units}), languages)
    corpora, unit_counts = processes.agreed(lambda: read_shards(plan, own, reader))
    candidates = plan_pairs(plan)
    local = np.zeros((len(candidates), plan.num_shards), np.int64)
    for s, corpus in corpora.items():
        local[:, s] = [len(corpus.parallel.get(pair, ())) for pair in candidates]
    table = processes.sum(np.concatenate([unit_counts.ravel(), local.ravel()]))
    unit_counts, counts = table[:unit_counts.size].reshape(unit_counts.shape), table[unit_counts.size:]
    for unit, (lines, kept, *skipped) in zip(plan.units, unit_counts):
        reader.require_text(unit.name, lines, kept, any(skipped), unit.langs)
    counts = counts.reshape(local.shape)
    names = [pair for pair, row in zip(candidates, counts) if row.sum() > 0]
    counts = counts[[candidates.index(pair) for pair in names]].reshape(len(names), plan.num_shards)
    replicated = [pair for pair, row in zip(names, counts) if row.min() < MIN_SHARD_SENTENCES]
    if replicated and len(own) < plan.num_shards:
        others = [s for s in range(plan.num_shards) if s not in own]
        corpora.update(read_shards(plan, others, reader.quiet(), pairs=set(replicated))[0])
    parallel = {pair: _shard_pairs(corpora, pair, own, plan.num_shards, pair in replicated) for pair in names}
    return PairText(names, counts, replicated, parallel)


def _shard_pairs(corpora, pair, own: range, num_shards: int, replicated: bool) -> list[list[tuple[str, str]]]:
    """A language pair's translation pairs in each own shard; a replicated pair's whole set in each."""
    if replicated:
        whole = [row for s in range(num_shards) for row in corpora[s].parallel.get(pair, ())]
        return [whole] * len(own)
    return [corpora[s].parallel[pair] for s in own]


def tokenizer_text(text: CorpusText, probs: dict[str, float], draws: int) -> dict[str, list[str]]:
    """Each language's tokenizer training sentences, the same whatever the process count: all
    training text of a replicated language; of the others, the first training sentences of
    each of up to TOKENIZER_SHARDS evenly spread shards, about _POOL * draws * q_i in all (read
    from the corpus where this process does not hold them)."""
    num_shards = text.plan.num_shards
    count = min(num_shards, TOKENIZER_SHARDS)
    picked = [k * num_shards // count for k in range(count)]
    sharded = [lang for lang in text.languages if lang not in text.replicated]
    want = {lang: math.ceil(_POOL * draws * probs[lang] / len(picked)) for lang in sharded}
    pools = {lang: list(text.train[lang][0]) for lang in text.replicated}
    for s in picked:
        if s in text.shards:
            shard = {lang: text.train[lang][s - text.shards.start] for lang in sharded}
        elif sharded:
            corpora, _ = read_shards(text.plan, [s], text.reader.quiet(), limit=max(want.values()),
                                     languages=set(sharded))
            shard = corpora[s].mono
        for lang in sharded:
            row = text.languages.index(lang)
            trained = int(text.sentences[row, s] - text.held_out_sizes(lang)[s])
            pools.setdefault(lang, []).extend(shard[lang][:min(want[lang], trained)])
    return pools
