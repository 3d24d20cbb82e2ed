"""Zero-shot cross-lingual XNLI (XTREME): fine-tune on English NLI, classify 15 languages.

Protocol (Conneau et al. 2018; XTREME, Hu et al. 2020): a sentence-pair classifier
(models/task_heads.SequenceClassifier: XLM-R's head on the `<s>` state of the last
layer) is fine-tuned on English premise/hypothesis pairs and predicts entailment (0),
neutral (1) or contradiction (2) on the XNLI test set of every language, whose labels
it never saw. Metric: accuracy per language; summary: the mean over languages, the
source (English) accuracy, the targets' mean and the transfer gap (source minus target
mean); Result.majority: the most frequent training label scored on each test set
(about 1/3 on XNLI, whose splits are balanced).

- Inputs as XLM-R's: `<s> premise </s></s> hypothesis </s>`, at most `seq_len` tokens;
  when too long, the longer side loses its last token first (transformers'
  "longest_first"; on a tie, the hypothesis).
- Small scale (the default): training on English XNLI *dev* (`train_split="validation"`,
  2490 pairs), testing on XNLI test, with no checkpoint selection (there is no held-out
  dev set left to select on, so the last step is scored).
- Full scale (XTREME): train on MultiNLI's 393k English pairs from TFDS, read from a
  local data_dir and never downloaded: `train_tfds="multi_nli"` with `tfds_data_dir`
  where `tfds build multi_nli --data_dir=...` prepared it (its labels use XNLI's order),
  and XTREME's budget: `epochs=5`, `learning_rate=2e-5` (base) or `3e-5` (large),
  `batch_size=32`, `seq_len=128`; `train_split` then serves nothing and the XNLI files
  are only the test sets.
- Default learning rate 1e-4, not XTREME's 2e-5: small models fine-tuned for a few
  hundred steps barely move at 2e-5 (XTREME's base models take ~60k steps); 1e-4 is in
  the range Google's small-BERT release recommends (3e-5 to 3e-4). Too high a rate makes
  XNLI collapse to one class (33.3%: a known pitfall), which the majority baseline beside
  the accuracy shows at once. Measured on the tests' tiny model (3 layers, 64 wide, 300
  MLM steps), 5 epochs of English dev: 34.4% / 36.1% / 33.4% (collapsed) English test
  accuracy at 1e-4 / 3e-4 / 1e-3: a model that small learns next to no NLI.

Files: `<data>/xnli_<split>_<lang>.tsv`, header `id<TAB>premise<TAB>hypothesis<TAB>label`.
Result.details: the training accuracy after fine-tuning (on up to 1000 training pairs:
whether the model fit what it saw, apart from whether that transfers), the loss curve,
the majority label and the example counts. Each language's text is tokenized and fed as
that language of the run (evaluation/languages.py): its tokenizer, and its language id
for models with language embeddings.
"""
import collections
import os

import numpy as np

from xlm_jax.errors import ConfigError, DataError
from xlm_jax.evaluation import finetune
from xlm_jax.evaluation.evaluator import EvalContext, Evaluator, Result
from xlm_jax.evaluation.inputs import read_lines
from xlm_jax.models.task_heads import SequenceClassifier

XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
LABELS = ("entailment", "neutral", "contradiction")
HEADER = ["id", "premise", "hypothesis", "label"]


def read_xnli(path) -> list[tuple[str, str, int]]:
    """(premise, hypothesis, label) rows of an XNLI TSV; DataError naming file:line for a bad row."""
    lines = read_lines(path, "XNLI file")
    if lines[0].split("\t") != HEADER:
        raise DataError(f"{path}:1: expected the header {'<TAB>'.join(HEADER)}, got {lines[0][:80]!r}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 4:
            raise DataError(f"{path}:{number}: expected 4 tab-separated fields (id, premise, hypothesis, "
                            f"label), got {len(fields)}")
        if fields[3] not in ("0", "1", "2"):
            raise DataError(f"{path}:{number}: label {fields[3]!r} is not 0, 1 or 2 "
                            f"({', '.join(LABELS)})")
        rows.append((fields[1], fields[2], int(fields[3])))
    if not rows:
        raise DataError(f"{path}: no examples (only the header)")
    return rows


def truncate_pair(first: np.ndarray, second: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """transformers' "longest_first": drop the longer side's last token until both fit in `budget`
    (on a tie, the second's). In closed form: the shorter side stays whole if it fits in half."""
    if len(first) + len(second) <= budget:
        return first, second
    shorter = min(len(first), len(second))
    if 2 * shorter <= budget:
        keep = (budget - shorter, shorter) if len(first) >= len(second) else (shorter, budget - shorter)
    else:
        keep = (budget - budget // 2, budget // 2)
    return first[:keep[0]], second[:keep[1]]


def pair_ids(tokenizer, premises: list[str], hypotheses: list[str], seq_len: int) -> list[np.ndarray]:
    """`<s> premise </s></s> hypothesis </s>` per pair, at most seq_len tokens."""
    bos, eos = np.array([tokenizer.bos_id], np.int32), np.array([tokenizer.eos_id], np.int32)
    out = []
    for p, h in zip(tokenizer.encode(premises), tokenizer.encode(hypotheses)):
        p, h = truncate_pair(np.asarray(p, np.int32), np.asarray(h, np.int32), seq_len - 4)
        out.append(np.concatenate([bos, p, eos, eos, h, eos]))
    return out


def read_tfds_pairs(name: str, data_dir: str, limit: int) -> list[tuple[str, str, int]]:
    """(premise, hypothesis, label) of a prepared TFDS NLI dataset's train split; never downloads.
    Pairs without a gold label (-1, as SNLI has) are left out, as transformers' scripts do."""
    import tensorflow_datasets as tfds
    dataset = tfds.load(name, split="train", data_dir=data_dir or None, download=False)
    if limit:
        dataset = dataset.take(limit)
    return [(row["premise"].decode("utf-8"), row["hypothesis"].decode("utf-8"), int(row["label"]))
            for row in tfds.as_numpy(dataset) if 0 <= int(row["label"]) <= 2]


class XNLI(Evaluator):
    fine_tunes = True
    kind = "xnli"

    @classmethod
    def defaults(cls) -> dict:
        return {
            "data": "",                     # the directory of xnli_<split>_<lang>.tsv files
            "source_language": "en",
            "train_split": "validation",    # the split of the source language trained on
            "test_split": "test",
            "languages": "",                # comma-separated test languages; "" = all 15
            "max_train_examples": 0,        # the first N training pairs (0 = all)
            "max_test_examples": 0,         # the first N test pairs per language (0 = all; aligned ids)
            "train_tfds": "",               # e.g. "multi_nli": train on a prepared TFDS dataset instead
            "tfds_data_dir": "",            # where it was prepared ("" = TFDS's default)
            **finetune.FINETUNE_OPTIONS,
            "epochs": 5.0,                  # XTREME's XNLI budget
        }

    def __init__(self, name, options):
        super().__init__(name, options)
        self._data = None

    def path(self, split: str, language: str) -> str:
        return os.path.join(self.options.data, f"xnli_{split}_{language}.tsv")

    def languages(self) -> list[str]:
        wanted = [x.strip() for x in self.options.languages.split(",") if x.strip()]
        return wanted or list(XNLI_LANGUAGES)

    def check(self) -> None:
        finetune.check_options(self)
        o = self.options
        if not o.data:
            raise ConfigError(f"config field `{self.field('data')}`: is empty; give the directory of the "
                              "xnli_<split>_<lang>.tsv files")
        if not o.train_tfds and o.train_split == o.test_split:
            raise ConfigError(f"config field `{self.field('train_split')}`: {o.train_split!r} is also the "
                              f"test split; training on the test set would score memory, not transfer")
        if o.train_tfds:
            train_file, train = f"tfds:{o.train_tfds}", None    # read in evaluate: 393k pairs
            self._open_tfds()
        else:
            train_file = self.path(o.train_split, o.source_language)
            train = read_xnli(train_file)[:o.max_train_examples or None]
        tests = {}
        for language in self.languages():
            path = self.path(o.test_split, language)
            tests[language] = (path, read_xnli(path)[:o.max_test_examples or None])
        self._data = {"train_file": train_file, "train": train, "tests": tests}

    def languages_used(self) -> list[str]:
        return list(dict.fromkeys([self.options.source_language, *self._data["tests"]]))

    def _open_tfds(self) -> None:
        """Opens the TFDS training set without reading it, so a missing one fails up front."""
        try:
            import tensorflow_datasets as tfds
            tfds.builder(self.options.train_tfds, data_dir=self.options.tfds_data_dir or None).info.splits["train"]
        except Exception as error:  # noqa: BLE001 (not installed, not prepared, no train split: many types)
            raise DataError(f"config field `{self.field('train_tfds')}`: cannot open {self.options.train_tfds!r} "
                            f"in {self.options.tfds_data_dir or 'the default TFDS data_dir'} "
                            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                            f"evaluations never download: prepare it with `tfds build {self.options.train_tfds} "
                            f"--data_dir=...` and set `{self.field('tfds_data_dir')}`") from None

    def training_pairs(self) -> list[tuple[str, str, int]]:
        if self._data["train"] is None:
            self._data["train"] = read_tfds_pairs(self.options.train_tfds, self.options.tfds_data_dir,
                                                  self.options.max_train_examples)
        return self._data["train"]

    def evaluate(self, context: EvalContext) -> Result:
        if self._data is None:
            self.check()
        o, subject = self.options, context.subject
        seq_len = min(o.seq_len, subject.model_config.max_len)
        train = self.training_pairs()
        if not train:
            raise DataError(f"{self._data['train_file']}: no training pairs")
        source = context.inputs(o.source_language)
        examples = finetune.Examples(
            ids=pair_ids(source.tokenizer, [p for p, _, _ in train], [h for _, h, _ in train], seq_len),
            labels=[label for _, _, label in train], language_ids=[source.language_id] * len(train))
        tuner = finetune.FineTune(context, SequenceClassifier(subject.model_config, len(LABELS)),
                                  finetune.budget(o, len(train)), self.name)
        context.log(f"{self.name}: fine-tuning on {len(train)} pairs of {self._data['train_file']} "
                    f"({tuner.budget.steps} steps)")
        params = tuner.train(examples).params
        counts = collections.Counter(examples.labels)
        majority = min(counts, key=lambda label: (-counts[label], label))
        per_language, baseline = {}, {}
        for language, (path, rows) in self._data["tests"].items():
            target = context.inputs(language)
            ids = pair_ids(target.tokenizer, [p for p, _, _ in rows], [h for _, h, _ in rows], seq_len)
            logits = tuner.predict(params, ids, [target.language_id] * len(ids))
            predicted = np.array([int(np.argmax(x)) for x in logits])
            gold = np.array([label for _, _, label in rows])
            per_language[language] = {"accuracy": float(np.mean(predicted == gold))}
            baseline[language] = {"accuracy": float(np.mean(gold == majority))}
            context.log(f"{self.name}: {language} accuracy {per_language[language]['accuracy']:.4f} "
                        f"(majority {baseline[language]['accuracy']:.4f})")
        data_files = [path for path, _ in self._data["tests"].values()]
        if not o.train_tfds:
            data_files.insert(0, self._data["train_file"])
        return Result(
            per_language=per_language,
            summary=finetune.transfer_summary(per_language, "accuracy", o.source_language),
            majority=baseline, source_language=o.source_language, data_files=data_files,
            details={"train_examples": len(train), "majority_label": LABELS[majority],
                     "test_examples": {x: len(rows) for x, (_, rows) in self._data["tests"].items()},
                     "steps": tuner.budget.steps, "train_curve": tuner.history,
                     "train_accuracy": tuner.train_accuracy(params, examples)})
