"""The notebook surface: load a run directory or a transformers model, encode, evaluate.

    import xlm_jax
    model = xlm_jax.load("runs/demo")                 # or xlm_jax.load("hf:/models/xlm-roberta-base")
    vectors = model.encode(["Hallo Welt", "Hello world"])        # [2, hidden], mean-pooled last layer
    vectors = model.encode(["Hallo Welt"], language="de")        # as the run's language "de" (ids, layers)
    model.evaluate("retrieval", data="../shared/data/tatoeba", languages="deu,fra")   # a plain dict
    model.finetune("xnli", data="../shared/data/xnli", max_train_examples=2000)       # likewise
    model.predict_masked("The capital of France is <mask>.")    # [(piece, prob), ...] per <mask>
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xlm_jax.config import default_config
from xlm_jax.data.tokenizers import TOKENIZER_FILES, Tokenizer, tokenizer_exists
from xlm_jax.errors import CheckpointError, ConfigError
from xlm_jax.evaluation.encoding import SentenceEncoder
from xlm_jax.evaluation.evaluator import Subject
from xlm_jax.evaluation.languages import language_inputs
from xlm_jax.evaluation.registry import EVALUATORS, build_evaluators
from xlm_jax.evaluation.runner import EvaluationRunner
from xlm_jax.evaluation.subjects import checkpoint_subject, imported_subject
from xlm_jax.interop.hf import export_hf, family_of_config
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.parallel.mesh import make_mesh
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.train.checkpoints import load_config

class Model:
    """A MaskedLM's params with its tokenizer, on this process' devices (replicated, `dp`)."""

    def __init__(self, config, params, tokenizer: Tokenizer, step: int, workdir: str = "", mesh=None,
                 rules=None, languages: tuple[str, ...] = ()):
        self.config, self.params, self.tokenizer, self.step = config, params, tokenizer, step
        self.workdir = workdir   # the run directory (or hf:DIR) it was loaded from, if any
        self.languages = tuple(languages)   # the run's languages in language-id order; () = not known
        self.mesh = mesh if mesh is not None else make_mesh(_replicated_mesh_config())
        self.rules = rules if rules is not None else logical_axis_rules("dp")
        self._module = MaskedLM(config.model)
        self._encoder = SentenceEncoder(config.model, tokenizer, self.mesh, self.rules)
        self._logits = jax.jit(lambda p, ids, language_ids: self._module.apply(
            {"params": p}, ids, language_ids=language_ids if config.model.num_languages else None))

    @property
    def subject(self) -> Subject:
        return Subject(self.config.model, self.params, self.tokenizer, self.mesh, self.rules,
                       step=self.step, seed=self.config.train.seed, languages=self.languages)

    def encode(self, texts: list[str], layer=-1, pooling: str = "mean", language: str | None = None) -> np.ndarray:
        """Mean over the tokens (specials included, padding excluded) of one layer's states:
        [len(texts), hidden]; a tuple of layers gives [len(layers), len(texts), hidden].

        layer: index into [embeddings, layer 1, ..., layer L]; -1 is the last layer, None the
        middle one (XTREME's retrieval layer: 7 of 12). pooling="first" takes <s> / [CLS].
        language: the texts' language ("de", "deu", "zh_CN"): its tokenizer and language id, for a
        model that has them (`model.languages`); None: the shared tokenizer and id 0.
        """
        inputs = language_inputs(self.subject, language)
        vectors = self._encoder(self.params, list(texts), layer, pooling, inputs.language_id, inputs.tokenizer)
        return vectors[0] if isinstance(layer, int) or layer is None else vectors

    def evaluate(self, name: str, workdir: str | None = None, log=print, **options) -> dict:
        """Runs one evaluator: `name` from config.evals (options override its own), or an
        evaluator kind with `options`. Returns its record (per_language, summary, majority,
        random_init, ...) as plain dicts; with `workdir`, also writes <workdir>/eval/<step>/."""
        evals = self.config.evals
        if name in evals:
            entry = {**evals[name].to_dict(), **options}
        elif name in EVALUATORS:
            entry = {"kind": name, **options}
        else:
            raise ConfigError(f"no evaluator {name!r}: configured ones are {', '.join(evals) or '(none)'}; "
                              f"kinds: {', '.join(sorted(EVALUATORS))}")
        evaluator, = build_evaluators(ml_collections.ConfigDict({name: entry}))
        return EvaluationRunner([evaluator], workdir, log, encoder=self._encoder).run(self.subject)[name]

    def finetune(self, task: str, workdir: str | None = None, log=print, **options) -> dict:
        """Zero-shot transfer: fine-tunes on the source language of `task` (xnli, pos, ner, or a
        configured evaluator of one of those kinds) and tests on every target language; with
        `workdir`, the fine-tune checkpoints there and resumes if interrupted."""
        configured = self.config.evals.get(task)
        kind = (configured.get("kind") or task) if configured else task
        kinds = [k for k, cls in EVALUATORS.items() if cls.fine_tunes]
        if not (kind in EVALUATORS and EVALUATORS[kind].fine_tunes):
            raise ConfigError(f"finetune({task!r}): a fine-tuning task is one of {', '.join(kinds)} "
                              "(or a config.evals entry of one of those kinds); use evaluate() for the others")
        return self.evaluate(task, workdir, log, **options)

    def export_hf(self, directory: str, log=print) -> str:
        """Writes this model as a transformers directory (see xlm_jax.interop.hf.export_hf)."""
        export_hf(self.config.model, self.params, self.tokenizer, directory, log=log)
        return (f"exported step {self.step}" + (f" of {self.workdir}" if self.workdir else "")
                + f" to {directory} ({family_of_config(self.config.model).masked_lm})")

    def predict_masked(self, text: str, top_k: int = 5, language: str | None = None) -> list[list[tuple[str, float]]]:
        """The top_k pieces and probabilities for each mask token in `text`: `<mask>`, or
        `[MASK]` for a WordPiece model (the tokenizer turns it into the mask id); `language` as in encode."""
        inputs = language_inputs(self.subject, language)
        t = inputs.tokenizer
        ids = np.asarray([[t.bos_id, *t.encode([text])[0][:self.config.model.max_len - 2], t.eos_id]], np.int32)
        positions = np.flatnonzero(ids[0] == t.mask_id)
        if not positions.size:
            raise ValueError(f"text has no {t.id_to_piece(t.mask_id)}: {text!r}")
        language_ids = np.full_like(ids, inputs.language_id)
        probs = jax.nn.softmax(self._logits(self.params, ids, language_ids)[0].astype(jnp.float32), axis=-1)
        probs = np.asarray(probs)[:, :self.config.model.vocab_size]   # the padding ids have prob 0
        results = []
        for position in positions:
            top = np.argsort(-probs[position])[:top_k]
            results.append([(t.id_to_piece(int(i)), float(probs[position, i])) for i in top])
        return results


def _replicated_mesh_config():
    mesh = default_config().mesh
    mesh.data, mesh.fsdp, mesh.tensor = -1, 1, 1
    return mesh


def load(source: str, step: int | None = None, log=print) -> Model:
    """A run directory's checkpoint `step` (default: the newest readable one; unreadable newer
    ones are logged and left in place), or "hf:DIR", a transformers XLM-R / BERT directory
    (at step 0; an encoder-only one gets a random MLM head, so predict_masked means nothing)."""
    mesh, rules = make_mesh(_replicated_mesh_config()), logical_axis_rules("dp")
    if source.startswith("hf:"):
        config = default_config()
        subject = imported_subject(source.removeprefix("hf:"), mesh, rules, config.train.seed, log)
        config.model = subject.model_config
    else:
        config = load_config(source)
        if not tokenizer_exists(source):
            raise CheckpointError(f"{source} has no tokenizer ({' / '.join(TOKENIZER_FILES)}): is it an "
                                  "xlm_jax run directory?")
        config.mesh = _replicated_mesh_config()
        config.mesh.rules = "dp"
        subject = checkpoint_subject(config, source, mesh, rules, step, log)
    return Model(config, subject.params, subject.tokenizer, subject.step, source, mesh, rules, subject.languages)
