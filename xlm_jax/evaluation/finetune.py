"""The fine-tuning engine of every zero-shot transfer task (XNLI, POS, NER).

A task turns its data into labeled examples (token ids with `<s>`/`</s>`, and an int
label per example or per token, IGNORE where no loss applies) and a model
(models/task_heads.py); this engine trains it and predicts with it, reusing the
pretraining pieces: `make_optimizer` (AdamW, linear warmup then linear decay to 0, as
XTREME's fine-tuning scripts), `TrainState`, shardings from the params' logical axes, a
jitted step on the subject's mesh with the state donated, and orbax `Checkpoints`.

- Initialization: the encoder is the subject's `params["encoder"]`; the head comes
  from `subject.seed`. (The random-init baseline is just a random-init subject.)
- Batches: example i of step s is position s * batch + i of an endless stream of epoch
  permutations drawn from the seed, so the batches depend on nothing but the seed and
  the step: a resumed fine-tune sees the batches an uninterrupted one would. Every
  process builds the same global numpy batch; `jax.make_array_from_callback` hands each
  device its rows (so it runs on many hosts too). Rows are padded to a multiple of the
  batch shards with label-free rows, so results do not depend on the device count.
- Languages: each example carries its text's language id (Examples.language_ids), fed to
  models with language embeddings (and per-language layers) in training and prediction.
- Loss: cross-entropy summed over labeled rows/tokens and divided by their count, over
  the global batch (exact however it is sharded); dropout keys fold in the step.
- One compiled train shape: the length bucket of the longest training example. Prediction
  sorts examples by length into the same buckets (as evaluation/encoding.py does), with a
  fixed number of rows per call, so only a few shapes ever compile.
- Resumable: with `context.work_dir`, the state is saved every `checkpoint_every` steps and
  at the end; a new fine-tune in that directory resumes from the newest readable checkpoint
  (a finished one trains no further). Only the newest checkpoint is kept (params and AdamW
  moments: 3x the model), since a lost fine-tune costs minutes, not days. A checkpoint of
  other data, options or subject is an error, never silently reused. Without a work_dir
  nothing is written to disk.
"""
import dataclasses
import hashlib
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from xlm_jax.errors import CheckpointError, ConfigError, TrainingError
from xlm_jax.evaluation.encoding import LENGTH_BUCKETS
from xlm_jax.evaluation.evaluator import EvalContext
from xlm_jax.parallel.mesh import batch_sharding, batch_shards, on_mesh
from xlm_jax.train.checkpoints import Checkpoints, abstract_with_shardings
from xlm_jax.train.optim import make_optimizer
from xlm_jax.train.state import TrainState, layout_of_state

IGNORE = -1          # the label of a padding row or an unlabeled token: no loss, not scored
LOG_TIMES = 10       # progress lines per fine-tune

# The options every fine-tuning evaluator has (each task overrides some defaults).
FINETUNE_OPTIONS = {
    "seq_len": 128,            # tokens per example, <s> and </s> included (XTREME: 128)
    "batch_size": 32,          # examples per update (XTREME: 32)
    "learning_rate": 1e-4,     # peak of the warmup/decay schedule; XTREME's 2e-5 suits base models
    "epochs": 2.0,             # passes over the training examples ...
    "steps": 0,                # ... or exactly this many updates when > 0
    "warmup_fraction": 0.1,    # of the updates, linear warmup from 0
    "weight_decay": 0.0,       # AdamW decoupled decay (XTREME: 0)
    "checkpoint_every": 200,   # with a work_dir: save every N updates (and at the end)
}


@dataclasses.dataclass(frozen=True)
class Budget:
    """The resolved fine-tuning hyperparameters (steps counted from epochs)."""
    steps: int
    batch_size: int
    learning_rate: float
    warmup_fraction: float
    weight_decay: float
    checkpoint_every: int


def check_options(evaluator) -> None:
    """ConfigError naming `evals.<name>.<option>` for a fine-tuning option out of range."""
    o = evaluator.options
    checks = [("seq_len", o.seq_len >= 8, "at least 8"), ("batch_size", o.batch_size > 0, "positive"),
              ("learning_rate", o.learning_rate > 0, "positive"),
              ("epochs", o.epochs > 0 or o.steps > 0, "positive (or set steps)"),
              ("steps", o.steps >= 0, "0 (use epochs) or positive"),
              ("warmup_fraction", 0 <= o.warmup_fraction < 1, "in [0, 1)"),
              ("weight_decay", o.weight_decay >= 0, "non-negative"),
              ("checkpoint_every", o.checkpoint_every >= 0, "0 (only at the end) or positive")]
    for option, ok, rule in checks:
        if not ok:
            raise ConfigError(f"config field `{evaluator.field(option)}`: got {o[option]!r}; must be {rule}")


def budget(options, num_examples: int) -> Budget:
    """The Budget of an evaluator's options for `num_examples` training examples."""
    steps = options.steps or max(1, math.ceil(options.epochs * num_examples / options.batch_size))
    return Budget(steps=steps, batch_size=options.batch_size, learning_rate=float(options.learning_rate),
                  warmup_fraction=float(options.warmup_fraction), weight_decay=float(options.weight_decay),
                  checkpoint_every=options.checkpoint_every or steps)


def optimizer_config(b: Budget) -> ml_collections.ConfigDict:
    """The `train` fields make_optimizer reads: AdamW (0.9, 0.999, 1e-8), clip 1.0, as transformers'
    Trainer that XTREME's scripts use."""
    return ml_collections.ConfigDict({
        "learning_rate": b.learning_rate, "end_learning_rate": 0.0, "num_steps": b.steps,
        "warmup_steps": int(b.warmup_fraction * b.steps), "schedule": "linear", "power": 1.0,
        "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": b.weight_decay, "clip_norm": 1.0})


@dataclasses.dataclass
class Examples:
    """Labeled examples: ids[i] is `<s> ... </s>` (int32), labels[i] an int (one per sequence)
    or an int32 array as long as ids[i] (one per token, IGNORE where there is none);
    language_ids[i] the language id of example i's text (None: 0 for every example)."""
    ids: list[np.ndarray]
    labels: list
    language_ids: list[int] | None = None

    def head(self, limit: int) -> "Examples":
        """The first `limit` examples."""
        return Examples(self.ids[:limit], self.labels[:limit],
                        None if self.language_ids is None else self.language_ids[:limit])


def label_loss_terms(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Cross-entropy sum, correct predictions and labeled count over rows ([B, C]) or tokens
    ([B, S, C]); IGNORE labels count for nothing. Sums, so any split of the batch adds up."""
    weights = (labels != IGNORE).astype(jnp.float32)
    safe = jnp.where(labels == IGNORE, 0, labels)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == safe).astype(jnp.float32)
    return {"loss_sum": jnp.sum(nll * weights), "correct": jnp.sum(correct * weights),
            "count": jnp.sum(weights)}


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(seed: int, step: int, batch_size: int, num_examples: int) -> np.ndarray:
    """The examples of update `step` (0-based): positions step*B ... step*B + B - 1 of the
    concatenated epoch permutations. A pure function of its arguments, for exact resumes."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = np.divmod(positions, num_examples)
    orders = {int(e): epoch_order(seed, int(e), num_examples) for e in np.unique(epochs)}
    return np.array([orders[int(e)][o] for e, o in zip(epochs, offsets)], np.int64)


def padded_batch(examples: Examples, indices, rows: int, length: int, pad_id: int) -> dict[str, np.ndarray]:
    """input_ids and language_ids [rows, length], labels [rows] or [rows, length]; rows past
    `indices` are padding (IGNORE labels)."""
    token_level = np.ndim(examples.labels[0]) == 1
    ids = np.full((rows, length), pad_id, np.int32)
    language_ids = np.zeros((rows, length), np.int32)
    labels = np.full((rows, length) if token_level else (rows,), IGNORE, np.int32)
    for row, i in enumerate(indices):
        n = len(examples.ids[i])
        ids[row, :n] = examples.ids[i]
        if examples.language_ids is not None:
            language_ids[row] = examples.language_ids[i]
        if token_level:
            labels[row, :n] = examples.labels[i]
        else:
            labels[row] = examples.labels[i]
    return {"input_ids": ids, "language_ids": language_ids, "labels": labels}


def length_bucket(length: int, max_len: int) -> int:
    """The smallest of LENGTH_BUCKETS (or max_len) that holds `length` tokens."""
    return next((b for b in LENGTH_BUCKETS if length <= b < max_len), max_len)


def fingerprint(subject, module, examples: Examples, b: Budget) -> str:
    """What a fine-tune's result depends on (not how often it is saved), for refusing a checkpoint
    of another one."""
    digest = hashlib.sha256()
    for ids, labels in zip(examples.ids, examples.labels):
        digest.update(np.asarray(ids, np.int32).tobytes() + b"|" + np.asarray(labels, np.int32).tobytes() + b";")
    if examples.language_ids is not None:
        digest.update(np.asarray(examples.language_ids, np.int32).tobytes())
    hyperparameters = {k: v for k, v in dataclasses.asdict(b).items() if k != "checkpoint_every"}
    described = json.dumps([type(module).__name__, module.num_labels, hyperparameters, subject.label,
                            subject.step, subject.seed, subject.model_config.to_dict(), digest.hexdigest()],
                           sort_keys=True, default=str)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


class Programs:
    """The jitted init, train step and predict of one model, budget and mesh, with the state's
    shardings. Built once per (architecture, labels, budget, mesh, rules) and shared (see
    `programs`): the model and its random-init baseline, and every re-evaluation during
    pretraining, reuse the compiled shapes. Seeds are arguments, not constants, for the same reason.
    """

    def __init__(self, module, b: Budget, mesh, rules):
        self.module, self.mesh, self.rules = module, mesh, rules
        self.with_languages = bool(module.config.num_languages)
        self.rows_sharding = batch_sharding(mesh, rules)
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.optimizer = make_optimizer(optimizer_config(b))
        self.abstract, self.shardings = layout_of_state(self._init_boxed, self.optimizer, mesh, rules)
        self.init = self._init_fn()
        self.step = self._step_fn()
        self.predict = jax.jit(on_mesh(self._logits, mesh, rules),
                               in_shardings=(self.shardings.params, self.rows_sharding),
                               out_shardings=self.replicated)

    def _language_kwargs(self, language_ids):
        """The batch's language ids, for a model with XLM language embeddings (others ignore them)."""
        return {"language_ids": language_ids} if self.with_languages else {}

    def _init_boxed(self, rng):
        ids = jnp.full((1, 8), 4, jnp.int32)
        return self.module.init({"params": rng, "dropout": rng}, ids,
                                **self._language_kwargs(jnp.zeros_like(ids)))["params"]

    def _init_fn(self):
        """(encoder params, key) -> step-0 state: that encoder, a head drawn from the key, fresh moments."""
        def init(encoder_params, rng):
            params = {**nn.meta.unbox(self._init_boxed(rng)), "encoder": encoder_params}
            return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.optimizer.init(params))

        return jax.jit(on_mesh(init, self.mesh, self.rules), in_shardings=(self.shardings.params["encoder"], None),
                       out_shardings=self.shardings)

    def _step_fn(self):
        """(state, batch, dropout key) -> (state, metrics), the state donated."""
        def step(state: TrainState, batch, dropout_key):
            rng = jax.random.fold_in(dropout_key, state.step)

            def loss_fn(params):
                logits = self.module.apply({"params": params}, batch["input_ids"], deterministic=False,
                                           rngs={"dropout": rng}, **self._language_kwargs(batch["language_ids"]))
                terms = label_loss_terms(logits, batch["labels"])
                return terms["loss_sum"], terms

            grads, terms = jax.grad(loss_fn, has_aux=True)(state.params)
            count = jnp.maximum(terms["count"], 1.0)
            grads = jax.tree.map(lambda g: g / count, grads)
            updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
            new_state = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                   opt_state=opt_state)
            return new_state, {"loss": terms["loss_sum"] / count, "accuracy": terms["correct"] / count}

        return jax.jit(on_mesh(step, self.mesh, self.rules),
                       in_shardings=(self.shardings, self.rows_sharding, None),
                       out_shardings=(self.shardings, self.replicated), donate_argnums=(0,))

    def _logits(self, params, batch):
        return self.module.apply({"params": params}, batch["input_ids"], deterministic=True,
                                 **self._language_kwargs(batch["language_ids"]))


_PROGRAMS: dict[tuple, Programs] = {}


def programs(module, b: Budget, mesh, rules) -> Programs:
    """The shared Programs of `module` under budget `b` (what the optimizer sees of it) on `mesh`."""
    key = (type(module).__name__, module.num_labels, module.config.to_json(sort_keys=True),
           optimizer_config(b).to_json(sort_keys=True), mesh, rules)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = Programs(module, b, mesh, rules)
    return _PROGRAMS[key]


class FineTune:
    """Fine-tunes `module` (a models/task_heads classifier) from the context's subject, then predicts.

    `name` prefixes the progress lines ("xnli: fine-tuning step 40/120, loss 1.02").
    """

    def __init__(self, context: EvalContext, module, b: Budget, name: str):
        self.context, self.budget, self.name = context, b, name
        self.subject = subject = context.subject
        self.programs = programs(module, b, subject.mesh, subject.rules)
        shards = batch_shards(subject.mesh, subject.rules)
        self.rows = -(-b.batch_size // shards) * shards
        self.pad_id = subject.tokenizer.pad_id
        self.history = []

    def initial_state(self) -> TrainState:
        """Step 0: the subject's encoder, a head drawn from the subject's seed, fresh AdamW moments."""
        encoder = jax.device_put(self.subject.params["encoder"], self.programs.shardings.params["encoder"])
        return self.programs.init(encoder, jax.random.key(self.subject.seed))

    # --- training -------------------------------------------------------------------------
    def _global(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        sharding = self.programs.rows_sharding
        return {key: jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
                for key, value in batch.items()}

    def train(self, examples: Examples) -> TrainState:
        """The fine-tuned state after budget.steps updates (resumed from context.work_dir if it holds some)."""
        b, total = self.budget, self.budget.steps
        length = length_bucket(max(len(ids) for ids in examples.ids), self.subject.model_config.max_len)
        key = fingerprint(self.subject, self.programs.module, examples, b)
        checkpoints = Checkpoints(self.context.work_dir, keep=1, async_save=False) if self.context.work_dir else None
        try:
            state, history = self._start(checkpoints, key)
            dropout_key = jax.random.key(self.subject.seed + 1)
            log_every = max(1, total // LOG_TIMES)
            for step in range(int(state.step), total):
                indices = batch_indices(self.subject.seed, step, b.batch_size, len(examples.ids))
                batch = self._global(padded_batch(examples, indices, self.rows, length, self.pad_id))
                state, metrics = self.programs.step(state, batch, dropout_key)
                done = step + 1
                if done % log_every == 0 or done == total:
                    history.append(self._report(done, metrics))
                if checkpoints and (done % b.checkpoint_every == 0 or done == total):
                    checkpoints.save(done, state, {"fingerprint": key, "history": history})
        finally:
            if checkpoints:
                checkpoints.close()
        self.history = history
        return state

    def _start(self, checkpoints, key: str):
        """(state, progress history) to train on from: the newest checkpoint, else step 0."""
        if checkpoints is None or checkpoints.latest_step() is None:
            return self.initial_state(), []
        state, data = checkpoints.restore(abstract_with_shardings(self.programs.abstract, self.programs.shardings),
                                          log=self.context.log)
        if data.get("fingerprint") != key:
            raise CheckpointError(f"{checkpoints.directory} holds a fine-tune of other data, options or model "
                                  f"(fingerprint {data.get('fingerprint')}, this one {key}); delete "
                                  f"{self.context.work_dir} to fine-tune again")
        self.context.log(f"{self.name}: resuming the fine-tune at step {int(state.step)}/{self.budget.steps}")
        return state, list(data["history"])

    def _report(self, done: int, metrics) -> dict:
        loss, accuracy = float(metrics["loss"]), float(metrics["accuracy"])
        if not math.isfinite(loss):
            raise TrainingError(f"{self.name}: the fine-tuning loss is {loss} at step {done}; lower "
                                f"the learning rate ({self.budget.learning_rate})")
        self.context.log(f"{self.name}: fine-tuning step {done}/{self.budget.steps}, loss {loss:.4f}, "
                         f"batch accuracy {accuracy:.3f}")
        return {"step": done, "loss": loss, "accuracy": accuracy}

    # --- prediction -----------------------------------------------------------------------
    def train_accuracy(self, params, examples: Examples, limit: int = 1000) -> float:
        """Accuracy on (the first `limit` of) the training examples: whether the model fit what it
        saw, told apart from whether that transfers."""
        head = examples.head(limit)
        return labeled_accuracy(self.predict(params, head.ids, head.language_ids), head)

    def predict(self, params, ids: list[np.ndarray], language_ids: list[int] | None = None) -> list[np.ndarray]:
        """float32 logits per example, in order: [labels] per sequence, or [len(ids[i]), labels] per token.
        language_ids: each example's language id (None: 0)."""
        order = np.argsort([len(x) for x in ids], kind="stable")
        max_len = self.subject.model_config.max_len
        pending = []
        for start in range(0, len(order), self.rows):
            chosen = order[start:start + self.rows]
            length = length_bucket(max(len(ids[i]) for i in chosen), max_len)
            batch = np.full((self.rows, length), self.pad_id, np.int32)
            languages = np.zeros((self.rows, length), np.int32)
            for row, i in enumerate(chosen):
                batch[row, :len(ids[i])] = ids[i]
                languages[row] = 0 if language_ids is None else language_ids[i]
            inputs = self._global({"input_ids": batch, "language_ids": languages})
            pending.append((chosen, self.programs.predict(params, inputs)))
        out = [None] * len(ids)
        for chosen, logits in pending:
            logits = np.asarray(logits)
            for row, i in enumerate(chosen):
                out[i] = logits[row] if logits.ndim == 2 else logits[row, :len(ids[i])]
        return out


def labeled_accuracy(logits: list[np.ndarray], examples: Examples) -> float:
    """Accuracy of argmax predictions over the labeled rows or tokens of `examples`."""
    correct = total = 0
    for x, labels in zip(logits, examples.labels):
        labels = np.asarray(labels)
        keep = labels != IGNORE
        correct += int((np.argmax(x, axis=-1) == labels)[keep].sum())
        total += int(keep.sum())
    return correct / max(total, 1)


def transfer_summary(per_language: dict[str, dict[str, float]], metric: str, source: str) -> dict[str, float]:
    """XTREME's numbers: the mean over test languages and, with the source among them, its score,
    the targets' mean and the transfer gap (source minus target mean)."""
    scores = {language: values[metric] for language, values in per_language.items()}
    summary = {f"{metric}_mean": float(np.mean(list(scores.values())))}
    targets = [v for language, v in scores.items() if language != source]
    if source in scores:
        summary[f"source_{metric}"] = scores[source]
    if targets:
        summary[f"target_{metric}_mean"] = float(np.mean(targets))
    if source in scores and targets:
        summary["transfer_gap"] = scores[source] - float(np.mean(targets))
    return summary
