"""The evaluator interface: how every evaluation plugs in.

An evaluator is a class registered under a `kind` ("retrieval", "xnli", ...). A config
names instances under `config.evals.<name>`: `kind` (default: the name), `every_steps`
(during pretraining; 0 = only in --mode=evaluate and the notebook), `random_init_baseline`
and the kind's own options (`Evaluator.defaults()`). Whoever evaluates (the train loop,
--mode=evaluate, `xlm_jax.load(...).evaluate`) builds an `EvalContext` around the model
and calls `evaluate(context)`, which returns a `Result`; evaluation/runner.py adds the
random-init baseline, writes results.json / report.md / plots and the TensorBoard scalars.
"""
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import ml_collections
import numpy as np
from jax.sharding import Mesh

from xlm_jax.evaluation.languages import LanguageInputs, language_inputs

COMMON_OPTIONS = {
    "kind": "",                   # the registered evaluator; "" = the entry's name
    "every_steps": 0,             # run every N pretraining steps (0: only when asked to evaluate)
    "random_init_baseline": True,  # also evaluate the same architecture with random weights
}


@dataclasses.dataclass
class Subject:
    """The model under evaluation: a MaskedLM's params with its tokenizer, on a mesh."""
    model_config: Any             # the `model` config section
    params: Any                   # MaskedLM params (model layout, vocabulary rows padded)
    tokenizer: Any                # xlm_jax.data.tokenizers.Tokenizer
    mesh: Mesh
    rules: tuple                  # logical-axis rules (xlm_jax.parallel.rules)
    step: int = 0                 # the checkpoint's step (0: imported or random weights)
    label: str = "model"          # "model", or "random-init" for the baseline
    seed: int = 0                 # for anything random the evaluator does (fine-tuning, sampling)
    languages: tuple[str, ...] = ()   # the run's languages in language-id order; () = not known (imported)


@dataclasses.dataclass
class Result:
    """What one evaluator measured. Metrics are plain floats keyed by language.

    per_language: language -> metric -> value (e.g. {"deu": {"acc_en_to_xx": 0.41, ...}}).
    summary: task-level numbers (means over languages, the transfer gap, DT, ...).
    majority: the majority-class baseline, keyed like per_language, where it applies.
    chance: what a random guess scores, keyed like per_language (retrieval: 1 / pairs).
    source_language: for fine-tuning tasks, the language trained on (reported beside targets).
    data_files: every input file read; results.json records their sha256.
    details: other JSON-serializable numbers (per-layer curves, CKA matrices, ...).
    artifacts: files the evaluator wrote into `context.artifacts_dir` (names relative to it).
    """
    per_language: dict[str, dict[str, float]]
    summary: dict[str, float] = dataclasses.field(default_factory=dict)
    majority: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    chance: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    source_language: str = ""
    data_files: list[str] = dataclasses.field(default_factory=list)
    details: dict = dataclasses.field(default_factory=dict)
    artifacts: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class EvalContext:
    """What an evaluator is given: the subject, its encode function, where to write.

    encode(texts, layers=(k, ...), pooling="mean"|"first", language=None) -> float32 [len(layers), N, hidden]:
    bucketed, batched and sharded on the subject's mesh (evaluation/encoding.py). Layer k
    indexes [embeddings, layer 1, ..., layer L]; negative k counts from the end. `language`
    (the data's code: "deu", "de", "zh_CN") picks the run's language: its tokenizer and
    language id (evaluation/languages.py); `inputs(language)` gives those to evaluators
    that tokenize themselves.
    artifacts_dir: where the evaluator may write its own files (PNG, TSV); None = write nothing.
    work_dir: where a fine-tune keeps resumable checkpoints; None = keep nothing on disk.
    heldout: the run's held-out pretraining batches, where there is a pretraining corpus
    (evaluation/heldout_mlm.HeldoutText), else None.
    """
    subject: Subject
    encode: Callable[..., np.ndarray]
    log: Callable[[str], None] = print
    artifacts_dir: str | None = None
    work_dir: str | None = None
    heldout: Any = None
    encoder: Any = None           # the SentenceEncoder behind `encode` (shapes, buckets, mesh)

    def inputs(self, language: str | None) -> LanguageInputs:
        """The tokenizer and language id of `language`'s text for this subject."""
        return language_inputs(self.subject, language)


class Evaluator:
    """Base class: subclasses set `kind`, `defaults()`, and implement `check` and `evaluate`.

    `check()` reads and validates every input up front (a missing file, misaligned pairs, a
    label outside the label set: a DataError naming file and line), so a run fails before it
    trains or evaluates anything; `evaluate(context)` does the work.
    """
    kind: ClassVar[str] = ""
    language_option: ClassVar[str] = "languages"   # the option that names its languages, for errors
    fine_tunes: ClassVar[bool] = False             # trains a task head (zero-shot transfer): Model.finetune's kinds

    def __init__(self, name: str, options: ml_collections.ConfigDict):
        self.name, self.options = name, options

    @classmethod
    def defaults(cls) -> dict:
        """The kind's own options and their defaults (COMMON_OPTIONS are added to them)."""
        return {}

    def field(self, option: str) -> str:
        """The config path of an option, for error messages."""
        return f"evals.{self.name}.{option}"

    def check(self) -> None:
        pass

    def languages_used(self) -> list[str]:
        """The language codes of the text it will encode, as its data names them (after check())."""
        return []

    def evaluate(self, context: EvalContext) -> Result:
        raise NotImplementedError
