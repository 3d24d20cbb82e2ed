"""Pseudo-perplexity of a masked LM on any text (Salazar et al. 2020, "Masked Language Model Scoring").

A masked LM has no left-to-right likelihood; its pseudo-log-likelihood (PLL) of a sentence W
masks each token in turn and sums the log-probabilities of the originals:
PLL(W) = sum_t log P(w_t | W with w_t replaced by <mask>). Over a corpus of N scored tokens,
pseudo-perplexity = exp(-sum_W PLL(W) / N), computed per language; the MLM accuracy of the same
predictions (argmax == original) is reported beside it. Sentences are <s> pieces </s>,
truncated to `max_len` tokens (encoding.token_rows); every non-special token is scored, as MLM
training predicts every non-special token (<s>, </s>, <unk>, ... are never targets). Blank lines
are skipped; the first `max_sentences` lines of each file are used.

Pseudo-perplexities are per token, so they compare models of one tokenizer only. Each masked
copy is one row of a fixed-shape batch (sentence length bucketed as in encoding.py); the LM head
runs at the masked slot only (MaskedLM's `masked_positions`). Each file's text is tokenized and
fed as its language of the run (evaluation/languages.py).
"""
import functools
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from xlm_jax.errors import ConfigError, DataError
from xlm_jax.evaluation.encoding import LENGTH_BUCKETS, token_rows
from xlm_jax.evaluation.evaluator import EvalContext, Evaluator, Result
from xlm_jax.evaluation.inputs import read_lines
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.parallel.mesh import batch_sharding, batch_shards, on_mesh

ROW_TOKENS = 8192    # tokens of one batch of masked copies (rows x bucket length)
LANGUAGE_PREFIX = re.compile(r"^([\w-]+):(?!//)(.*)$")   # "sw:path", not "gs://path"


def masked_copies(rows: list[np.ndarray], special_ids):
    """One masked copy per scored token: (sentence index, position, original id) per copy."""
    sentence, position, target = [], [], []
    for index, row in enumerate(rows):
        scored = np.flatnonzero(~np.isin(row, special_ids))
        sentence += [index] * len(scored)
        position += scored.tolist()
        target += row[scored].tolist()
    return np.array(sentence, np.int64), np.array(position, np.int32), np.array(target, np.int32)


class PseudoLikelihood:
    """Scores masked copies on a mesh: log P(original) and argmax hit at the masked slot, per copy."""

    def __init__(self, model_config, tokenizer, mesh, rules):
        self.config, self.tokenizer, self.mesh, self.rules = model_config, tokenizer, mesh, rules
        self.module = MaskedLM(model_config)
        self.shards = batch_shards(mesh, rules)
        self.rows_sharding = batch_sharding(mesh, rules)
        self.buckets = tuple(b for b in LENGTH_BUCKETS if b < model_config.max_len) + (model_config.max_len,)

    @functools.cached_property
    def _score_fn(self):
        with_languages = bool(self.config.num_languages)

        def score(params, ids, positions, targets, language_id):
            kwargs = {"language_ids": jnp.full_like(ids, language_id)} if with_languages else {}
            logits = self.module.apply({"params": params}, ids, positions[:, None], **kwargs)[:, 0]   # [R, V]
            log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            picked = jnp.take_along_axis(log_probs, targets[:, None], axis=-1)[:, 0]
            return picked, (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)

        replicated = NamedSharding(self.mesh, PartitionSpec())
        return jax.jit(on_mesh(score, self.mesh, self.rules),
                       in_shardings=(None,) + (self.rows_sharding,) * 3 + (replicated,), out_shardings=replicated)

    def _rows_per_call(self, bucket: int, remaining: int) -> int:
        """A power of two times the batch shards, at most ROW_TOKENS // bucket: few shapes compile."""
        most = max(self.shards, ROW_TOKENS // bucket // self.shards * self.shards)
        rows = self.shards
        while rows < most and rows < remaining:
            rows *= 2
        return min(rows, most)

    def _put(self, array: np.ndarray):
        return jax.make_array_from_callback(array.shape, self.rows_sharding, lambda index: array[index])

    def __call__(self, params, rows: list[np.ndarray], language_id: int = 0,
                 mask_id: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per sentence: PLL, argmax hits and the number of scored tokens, as float64 [N] arrays;
        rows of language `language_id`, masked by `mask_id` (default: the tokenizer's; a language
        with its own <mask>, data.shared_specials=False, passes that)."""
        mask_id = self.tokenizer.mask_id if mask_id is None else mask_id
        sentence, position, target = masked_copies(rows, self.tokenizer.special_ids)
        lengths = np.array([len(rows[i]) for i in sentence], np.int64)
        order = np.argsort(lengths, kind="stable")
        pending, start = [], 0
        while start < len(order):
            bucket = next(b for b in self.buckets if b >= lengths[order[start]])
            in_bucket = int(np.sum(lengths[order[start:]] <= bucket))
            batch_rows = self._rows_per_call(bucket, in_bucket)
            chosen = order[start:start + min(batch_rows, in_bucket)]
            ids = np.full((batch_rows, bucket), self.tokenizer.pad_id, np.int32)
            positions, targets = np.zeros(batch_rows, np.int32), np.zeros(batch_rows, np.int32)
            for j, copy in enumerate(chosen):
                row = rows[sentence[copy]]
                ids[j, :len(row)] = row
                ids[j, position[copy]] = mask_id
            positions[:len(chosen)], targets[:len(chosen)] = position[chosen], target[chosen]
            pending.append((chosen, self._score_fn(params, self._put(ids), self._put(positions), self._put(targets),
                                                   np.int32(language_id))))
            start += len(chosen)
        pll, hits = np.zeros(len(rows)), np.zeros(len(rows))
        for chosen, (picked, hit) in pending:
            np.add.at(pll, sentence[chosen], np.asarray(picked, np.float64)[:len(chosen)])
            np.add.at(hits, sentence[chosen], np.asarray(hit, np.float64)[:len(chosen)])
        return pll, hits, np.bincount(sentence, minlength=len(rows)).astype(np.float64)


class PseudoPerplexity(Evaluator):
    kind = "pseudo_perplexity"
    language_option = "files"

    def __init__(self, name, options):
        super().__init__(name, options)
        self._scorers = {}

    @classmethod
    def defaults(cls) -> dict:
        return {"files": "", "max_sentences": 200, "max_len": 128}

    def check(self) -> None:
        self.texts  # noqa: B018  (reads and validates every input)

    def languages_used(self) -> list[str]:
        return list(self.texts)

    @functools.cached_property
    def texts(self) -> dict[str, tuple[str, list[str]]]:
        """language -> (file, its first max_sentences non-blank lines)."""
        o = self.options
        if not o.files:
            raise ConfigError(f"config field `{self.field('files')}`: set it to \"lang:path,...\" (text files)")
        for name, least in (("max_sentences", 1), ("max_len", 3)):
            if o[name] < least:
                raise ConfigError(f"config field `{self.field(name)}`: got {o[name]}; must be >= {least}")
        texts = {}
        for entry in (e.strip() for e in o.files.split(",") if e.strip()):
            named = LANGUAGE_PREFIX.match(entry)
            language, path = named.groups() if named else (os.path.basename(entry).split(".")[0], entry)
            if language in texts:
                raise ConfigError(f"config field `{self.field('files')}`: language {language!r} is given twice")
            lines = [line for line in read_lines(path, f"{language} text") if line.strip()]
            if not lines:
                raise DataError(f"{path}: only blank lines")
            texts[language] = (path, lines[:o.max_sentences])
        return texts

    def _scorer(self, subject) -> PseudoLikelihood:
        """One scorer (and its compiled shapes) per architecture and mesh: the model and its
        random-init baseline share it."""
        key = (repr(sorted(dict(subject.model_config).items())), subject.tokenizer, subject.mesh, subject.rules)
        if key not in self._scorers:
            self._scorers[key] = PseudoLikelihood(subject.model_config, subject.tokenizer, subject.mesh,
                                                  subject.rules)
        return self._scorers[key]

    def evaluate(self, context: EvalContext) -> Result:
        subject = context.subject
        if self.options.max_len > subject.model_config.max_len:
            raise ConfigError(f"config field `{self.field('max_len')}`: {self.options.max_len} is longer than the "
                              f"model's max_len {subject.model_config.max_len}")
        scorer = self._scorer(subject)
        per_language, details = {}, {}
        for language, (path, lines) in self.texts.items():
            context.log(f"{self.name}: {language}: scoring {len(lines)} sentences token by token")
            inputs = context.inputs(language)
            rows = token_rows(inputs.tokenizer, lines, self.options.max_len)
            pll, hits, counts = scorer(subject.params, rows, inputs.language_id, inputs.tokenizer.mask_id)
            tokens = max(counts.sum(), 1.0)
            scored = [inputs.tokenizer.decode(row) for row in rows]   # the text scored, after truncation
            characters, words = max(sum(map(len, scored)), 1), max(sum(len(t.split()) for t in scored), 1)
            per_language[language] = {"pseudo_perplexity": math.exp(-pll.sum() / tokens),
                                      "mlm_accuracy": float(hits.sum() / tokens),
                                      "pll_per_token": float(pll.sum() / tokens),
                                      # per character and tokens per word: comparable across vocabularies
                                      "nats_per_char": float(-pll.sum() / characters),
                                      "tokens_per_word": float(counts.sum() / words)}
            details[language] = {"sentences": len(lines), "tokens": int(counts.sum()), "pll": float(pll.sum())}
        summary = {f"mean_{metric}": float(np.mean([m[metric] for m in per_language.values()]))
                   for metric in ("pseudo_perplexity", "mlm_accuracy")}
        return Result(per_language=per_language, summary=summary, details=details,
                      data_files=[path for path, _ in self.texts.values()])
