"""Zero-shot cross-lingual tagging (XTREME POS and NER): fine-tune on one language, tag others.

Protocol (XTREME, Hu et al. 2020): a token classifier (models/task_heads.TokenClassifier)
is fine-tuned on the source language's training file (at small scale: UD English-EWT
dev, `pos/en_ewt-ud-dev.tsv`) and tags the test files of every language without
seeing any of their labels (UD PUD: the same 1000 sentences in each language).

- Words and labels: each word is tokenized on its own (SentencePiece adds its '▁' word
  start to every word, WordPiece splits it into '##' pieces; byte models get the words
  joined by single spaces, as running text), so word boundaries are exact whatever the
  tokenizer does with whitespace. Only the first subword of a word carries its label
  (loss in training, prediction in testing); the other subwords get none. A word that
  tokenizes to nothing becomes one `<unk>`. A sentence longer than `seq_len` tokens is
  split into consecutive runs of whole words that fit, each its own example (XTREME's
  preprocessing splits long sentences the same way), so every word is trained on and
  predicted.
- The label set is the whole training file's (also when `max_train_sentences` trains on
  a slice of it); a test tag outside it is a DataError naming the file and line.
- POS (`kind="pos"`): accuracy over words, per language. NER (`kind="ner"`): span F1
  as seqeval computes it by default (conlleval): an entity is a maximal run of B-X/I-X
  tags of one type; it counts when its type, start and end all match. As seqeval's
  default (non-strict) mode, an I-X after O or after another type starts a new entity
  instead of being an error. Precision, recall and F1 are micro-averaged over the
  entities of all sentences (0 where undefined).
- Majority baseline (Result.majority): the most frequent training tag on every word
  (accuracy for POS; span F1 for NER, 0 when that tag is "O").
- Summary: the mean over test languages, the source language's score, the mean over
  the targets and the transfer gap (source minus target mean). Result.details: the label
  set, the majority tag, the training accuracy over first subwords (up to 1000 training
  examples), the loss curve and the number of training examples (chunks).

Readers: `word<TAB>tag` files (exactly two tab-separated columns), or space-separated
columns, word first and tag last, as CoNLL-2003 (`-DOCSTART-` lines are skipped), with a
blank line after each sentence, and UD `.conllu` (FORM and UPOS columns; comments, multiword ranges `1-2`
and empty nodes `8.1` skipped, so the syntactic words are tagged as in XTREME).
Test files: `test` is a comma list of `lang:path`, or a directory whose files matching
`test_glob` are the test sets, the language being the file name up to its first
`_`, `-` or `.` (`de_pud-ud-test.tsv` -> de); `languages` keeps some of them. Each
language's words are tokenized and fed as that language of the run (evaluation/languages.py).

Why one file: POS and NER share everything but their label sets: reading word/tag files,
aligning words to pieces, training the token classifier and scoring it.
"""
import collections
import dataclasses
import fnmatch
import os
import re
from typing import ClassVar

import numpy as np

from xlm_jax.data.language_ranges import LanguageRangeTokenizer
from xlm_jax.data.tokenizers import ByteTokenizer
from xlm_jax.errors import ConfigError, DataError
from xlm_jax.evaluation import finetune
from xlm_jax.evaluation.evaluator import EvalContext, Evaluator, Result
from xlm_jax.evaluation.inputs import read_lines
from xlm_jax.models.task_heads import TokenClassifier


@dataclasses.dataclass
class Sentence:
    words: list[str]
    tags: list[str]
    lines: list[int]     # the line of each word in its file, for errors


# --- readers ------------------------------------------------------------------------------
def read_tagged(path) -> list[Sentence]:
    """The sentences of a tagged file: `.conllu` (UD), else word/tag columns."""
    path = str(path)
    lines = read_lines(path, "tagged file")
    sentences = _conllu_sentences(path, lines) if path.endswith(".conllu") else _column_sentences(path, lines)
    if not sentences:
        raise DataError(f"{path}: no tagged words in the file")
    return sentences


def _sentences_of(rows):
    """Sentences from (line number, word, tag) rows, None marking a sentence end."""
    sentences, current = [], Sentence([], [], [])
    for row in list(rows) + [None]:
        if row is None:
            if current.words:
                sentences.append(current)
            current = Sentence([], [], [])
        else:
            number, word, tag = row
            current.words.append(word)
            current.tags.append(tag)
            current.lines.append(number)
    return sentences


def _column_sentences(path: str, lines: list[str]) -> list[Sentence]:
    def rows():
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                yield None
                continue
            tabbed = "\t" in line
            fields = line.split("\t") if tabbed else line.split()
            if fields[0] == "-DOCSTART-":
                continue
            if len(fields) < 2 or not fields[0] or not fields[-1].strip():
                raise DataError(f"{path}:{number}: expected `word<TAB>tag` (or columns with the word first "
                                f"and the tag last), got {line[:80]!r}")
            if tabbed and len(fields) != 2:   # its last column would be read as a tag of its own
                raise DataError(f"{path}:{number}: {len(fields)} tab-separated columns, but a `word<TAB>tag` row "
                                f"has 2 (the tag would be {fields[-1].strip()[:40]!r}; CoNLL-2003's columns are "
                                f"separated by spaces), got {line[:80]!r}")
            yield number, fields[0], fields[-1].strip()
    return _sentences_of(rows())


def _conllu_sentences(path: str, lines: list[str]) -> list[Sentence]:
    def rows():
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                yield None
                continue
            if line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 10:
                raise DataError(f"{path}:{number}: a CoNLL-U word line has 10 tab-separated columns, this one "
                                f"has {len(fields)}")
            if "-" in fields[0] or "." in fields[0]:
                continue   # a multiword token's range (its words follow) or an empty node
            yield number, fields[1], fields[3]
    return _sentences_of(rows())


# --- word pieces and labels ---------------------------------------------------------------
def word_pieces(tokenizer, words: list[str]) -> list[np.ndarray]:
    """The pieces of each word, each encoded as its own text (an empty result becomes `<unk>`)."""
    unk = np.array([tokenizer.unk_id], np.int32)
    return [ids.astype(np.int32) if len(ids) else unk for ids in tokenizer.encode(list(words))]


def word_separator(tokenizer) -> np.ndarray:
    """Ids between two words: a space for the byte tokenizer (which does not mark word starts
    itself), nothing for SentencePiece ('▁') and WordPiece ('##' marks the non-first pieces)."""
    base = tokenizer.base if isinstance(tokenizer, LanguageRangeTokenizer) else tokenizer
    if isinstance(base, ByteTokenizer):
        return tokenizer.encode([" "])[0].astype(np.int32)
    return np.zeros(0, np.int32)


@dataclasses.dataclass
class Chunk:
    """One model input: `<s> pieces of words[start:start + len(firsts)] </s>`; firsts[k] is the
    position of word start + k's first piece."""
    ids: np.ndarray
    firsts: np.ndarray
    start: int


def chunks_of(tokenizer, pieces: list[np.ndarray], max_len: int) -> list[Chunk]:
    """A sentence's words in consecutive runs that fit `max_len` tokens with `<s>` and `</s>`
    (XTREME splits long sentences so, rather than truncating them). A word longer than a whole
    chunk keeps its first max_len - 2 pieces."""
    separator, bos, eos = word_separator(tokenizer), [tokenizer.bos_id], [tokenizer.eos_id]
    chunks, ids, firsts, start = [], list(bos), [], 0
    for k, word in enumerate(pieces):
        word = word[:max_len - 2]
        if firsts and len(ids) + len(separator) + len(word) + 1 > max_len:
            chunks.append(Chunk(np.array(ids + eos, np.int32), np.array(firsts, np.int64), start))
            ids, firsts, start = list(bos), [], k
        if firsts:
            ids.extend(separator)
        firsts.append(len(ids))
        ids.extend(word)
    chunks.append(Chunk(np.array(ids + eos, np.int32), np.array(firsts, np.int64), start))
    return chunks


def sentence_chunks(tokenizer, sentences: list[Sentence], max_len: int) -> list[list[Chunk]]:
    """The chunks of every sentence; all words tokenized in one call."""
    flat = word_pieces(tokenizer, [w for s in sentences for w in s.words])
    out, start = [], 0
    for s in sentences:
        out.append(chunks_of(tokenizer, flat[start:start + len(s.words)], max_len))
        start += len(s.words)
    return out


def token_labels(chunk: Chunk, label_ids: np.ndarray) -> np.ndarray:
    """IGNORE everywhere except at the first piece of each of the chunk's words (label_ids: the
    whole sentence's)."""
    labels = np.full(len(chunk.ids), finetune.IGNORE, np.int32)
    labels[chunk.firsts] = label_ids[chunk.start:chunk.start + len(chunk.firsts)]
    return labels


def predicted_tags(tuner, params, sentences: list[Sentence], labels: list[str], max_len: int,
                   tokenizer=None, language_id: int = 0) -> list[list[str]]:
    """The tag of every word: the argmax at its first piece, in whichever chunk holds it; the words
    tokenized by `tokenizer` (default: the subject's) and read as language `language_id`."""
    chunked = sentence_chunks(tokenizer or tuner.subject.tokenizer, sentences, max_len)
    ids = [c.ids for chunks in chunked for c in chunks]
    logits = iter(tuner.predict(params, ids, [language_id] * len(ids)))
    predicted = []
    for chunks in chunked:
        tags = []
        for chunk in chunks:
            best = np.argmax(next(logits), axis=-1)
            tags.extend(labels[best[f]] for f in chunk.firsts)
        predicted.append(tags)
    return predicted


# --- NER spans ----------------------------------------------------------------------------
def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, first, last) of every entity of an IOB2 sequence, as seqeval's default mode reads it."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, this_kind = tag.partition("-")
        continues = prefix == "I" and kind == this_kind and start is not None
        if start is not None and not continues:
            spans.add((kind, start, i - 1))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and not continues):
            start, kind = i, this_kind
    return spans


def span_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 of exact (type, start, end) entity matches over sentences."""
    found = expected = correct = 0
    for gold_tags, predicted_tags in zip(gold, predicted):
        g, p = entity_spans(gold_tags), entity_spans(predicted_tags)
        found, expected, correct = found + len(p), expected + len(g), correct + len(g & p)
    precision = correct / found if found else 0.0
    recall = correct / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall}


def tag_accuracy(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    pairs = [(g, p) for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps)]
    return {"accuracy": sum(g == p for g, p in pairs) / len(pairs)}


def majority_tag(sentences: list[Sentence]) -> str:
    """The most frequent training tag (ties: the alphabetically first)."""
    counts = collections.Counter(t for s in sentences for t in s.tags)
    return min(counts, key=lambda tag: (-counts[tag], tag))


# --- the evaluators -----------------------------------------------------------------------
class TokenClassification(Evaluator):
    """Fine-tune a token classifier on `train`, score it on each language's test file."""
    fine_tunes = True
    metric: ClassVar[str] = ""
    task_defaults: ClassVar[dict] = {}

    @classmethod
    def defaults(cls) -> dict:
        return {
            "train": "",                 # the source language's tagged training file
            "test": "",                  # "lang:path,lang:path" or a directory (with test_glob)
            "test_glob": "*",            # in a `test` directory: the test files
            "languages": "",             # comma-separated test languages to keep; "" = all
            "source_language": "en",
            "max_train_sentences": 0,    # the first N training sentences (0 = all)
            "max_test_sentences": 0,     # the first N sentences per test language (0 = all)
            **finetune.FINETUNE_OPTIONS, **cls.task_defaults,
        }

    def __init__(self, name, options):
        super().__init__(name, options)
        self._data = None

    @staticmethod
    def score(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
        raise NotImplementedError

    def check_tags(self, path: str, sentences: list[Sentence]) -> None:
        """Subclasses reject training tags their metric cannot read."""

    # --- inputs ---------------------------------------------------------------------------
    def test_files(self) -> dict[str, str]:
        """language -> test file, from `test` (a lang:path list or a directory) and `languages`."""
        spec = self.options.test.strip()
        if not spec:
            raise ConfigError(f"config field `{self.field('test')}`: is empty; give \"lang:path,...\" or a "
                              "directory of test files")
        if os.path.isdir(spec):
            files = {}
            for name in sorted(fnmatch.filter(os.listdir(spec), self.options.test_glob)):
                language = re.split(r"[_.-]", name, maxsplit=1)[0]
                if language in files:
                    raise ConfigError(f"config field `{self.field('test_glob')}`: {self.options.test_glob!r} "
                                      f"matches two files of {language!r} in {spec}: {os.path.basename(files[language])} "
                                      f"and {name}; narrow it, or list \"lang:path\" in `{self.field('test')}`")
                files[language] = os.path.join(spec, name)
            if not files:
                raise DataError(f"{spec}: no file matches {self.field('test_glob')}={self.options.test_glob!r}")
        else:
            files = {}
            for entry in filter(None, (e.strip() for e in spec.split(","))):
                language, sep, path = entry.partition(":")
                if not sep or not language or not path:
                    raise ConfigError(f"config field `{self.field('test')}`: entry {entry!r} is not \"lang:path\" "
                                      "(and the value is not a directory)")
                if language in files:
                    raise ConfigError(f"config field `{self.field('test')}`: language {language!r} is listed twice")
                files[language] = path
        wanted = [x.strip() for x in self.options.languages.split(",") if x.strip()]
        missing = [x for x in wanted if x not in files]
        if missing:
            raise ConfigError(f"config field `{self.field('languages')}`: no test file for {', '.join(missing)} "
                              f"(test files exist for {', '.join(sorted(files))})")
        return {x: files[x] for x in wanted} if wanted else files

    def check(self) -> None:
        finetune.check_options(self)
        if not self.options.train:
            raise ConfigError(f"config field `{self.field('train')}`: is empty; give the training file")
        whole = read_tagged(self.options.train)
        self.check_tags(self.options.train, whole)
        labels = sorted({t for s in whole for t in s.tags})   # the task's, whatever slice is trained on
        train = whole[:self.options.max_train_sentences or None]
        tests = {}
        for language, path in self.test_files().items():
            sentences = read_tagged(path)[:self.options.max_test_sentences or None]
            for s in sentences:
                for tag, line in zip(s.tags, s.lines):
                    if tag not in labels:
                        raise DataError(f"{path}:{line}: tag {tag!r} is not in the training file's label set "
                                        f"({self.options.train}: {', '.join(labels)})")
            tests[language] = (path, sentences)
        self._data = {"train": train, "labels": labels, "tests": tests}

    def languages_used(self) -> list[str]:
        return list(dict.fromkeys([self.options.source_language, *self._data["tests"]]))

    # --- the work -------------------------------------------------------------------------
    def evaluate(self, context: EvalContext) -> Result:
        if self._data is None:
            self.check()
        train, labels, tests = self._data["train"], self._data["labels"], self._data["tests"]
        subject = context.subject
        max_len = min(self.options.seq_len, subject.model_config.max_len)
        source = context.inputs(self.options.source_language)
        examples = self.examples(source.tokenizer, train, labels, max_len, source.language_id)
        tuner = finetune.FineTune(context, TokenClassifier(subject.model_config, len(labels)),
                                  finetune.budget(self.options, len(examples.ids)), self.name)
        context.log(f"{self.name}: fine-tuning on {len(train)} sentences of {self.options.train} "
                    f"({len(labels)} tags, {tuner.budget.steps} steps)")
        params = tuner.train(examples).params
        majority = majority_tag(train)
        per_language, baseline = {}, {}
        for language, (path, sentences) in tests.items():
            target = context.inputs(language)
            predicted = predicted_tags(tuner, params, sentences, labels, max_len, target.tokenizer, target.language_id)
            gold = [s.tags for s in sentences]
            per_language[language] = self.score(gold, predicted)
            baseline[language] = self.score(gold, [[majority] * len(s.words) for s in sentences])
            context.log(f"{self.name}: {language} {self.metric} {per_language[language][self.metric]:.4f} "
                        f"(majority tag {majority}: {baseline[language][self.metric]:.4f})")
        return Result(
            per_language=per_language,
            summary=finetune.transfer_summary(per_language, self.metric, self.options.source_language),
            majority=baseline, source_language=self.options.source_language,
            data_files=[self.options.train] + [path for path, _ in tests.values()],
            details={"labels": labels, "majority_tag": majority, "train_sentences": len(train),
                     "test_sentences": {x: len(s) for x, (_, s) in tests.items()},
                     "train_examples": len(examples.ids), "steps": tuner.budget.steps,
                     "train_curve": tuner.history, "train_accuracy": tuner.train_accuracy(params, examples)})

    @staticmethod
    def examples(tokenizer, sentences: list[Sentence], labels: list[str], max_len: int,
                 language_id: int = 0) -> finetune.Examples:
        """One example per chunk of every sentence, labeled at each word's first piece; all of
        language `language_id`."""
        index = {tag: i for i, tag in enumerate(labels)}
        ids, token_label_ids = [], []
        for chunks, s in zip(sentence_chunks(tokenizer, sentences, max_len), sentences):
            label_ids = np.array([index[t] for t in s.tags], np.int32)
            ids.extend(c.ids for c in chunks)
            token_label_ids.extend(token_labels(c, label_ids) for c in chunks)
        return finetune.Examples(ids=ids, labels=token_label_ids, language_ids=[language_id] * len(ids))


class PartOfSpeech(TokenClassification):
    kind = "pos"
    metric = "accuracy"
    task_defaults: ClassVar[dict] = {"test_glob": "*_pud-ud-test.*", "epochs": 10.0}

    @staticmethod
    def score(gold, predicted):
        return tag_accuracy(gold, predicted)


class NamedEntities(TokenClassification):
    kind = "ner"
    metric = "f1"
    task_defaults: ClassVar[dict] = {"test_glob": "*-test.*", "epochs": 10.0}

    @staticmethod
    def score(gold, predicted):
        return span_scores(gold, predicted)

    def check_tags(self, path: str, sentences: list[Sentence]) -> None:
        for s in sentences:
            for tag, line in zip(s.tags, s.lines):
                if tag != "O" and not re.fullmatch(r"[BI]-\S+", tag):
                    raise DataError(f"{path}:{line}: NER tag {tag!r} is not IOB2 (O, B-TYPE or I-TYPE)")
