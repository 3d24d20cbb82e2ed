"""Data Transfer in bytes: how much target-language text is pretraining worth?

"Measuring Cross-lingual Transfer in Bytes" (arXiv 2404.08191), after Hernandez et al.'s
scaling laws for transfer. On a target-language text file, the last `heldout_lines` lines are
held out and the first `size` bytes (UTF-8) of the rest are the training text, for each of the
increasing `sizes`. For every size, two MLM runs of `steps` steps (same batches, masks,
optimizer, learning rate and schedule) are trained on that text:
  (a) fine-tuned: from the subject's params;
  (b) from scratch: the same architecture and tokenizer, random init from `subject.seed`.
Each is scored by its masked-LM loss on the held-out tail, masked once with a fixed seed, so
every run is scored on the same predictions.

D_F is the bytes a fine-tuned run used; D_E the bytes the from-scratch model needs to reach the
same held-out loss, read off the from-scratch loss-vs-log(bytes) curve (piecewise linear in log
bytes, first crossing); D_T = D_E - D_F, and D_T / D_E the fraction of the effective data that
came from transfer. Outside the measured curve D_E is not extrapolated: a fine-tuned loss below
every from-scratch loss gives D_E = the largest size with bound = +1 (D_E and D_T are *lower*
bounds); one at or above the from-scratch loss at the smallest size gives D_E = the smallest
size with bound = -1 (upper bounds). The headline numbers are those of the smallest size (the
low-resource end, where transfer matters most); every size is in `details` and has its own
`dt_bytes_<size>` and `bound_<size>`. All runs take the same number of steps, so a smaller size
is seen for more epochs: the curve measures what a fixed compute budget makes of that much text.

The random-init baseline is off by default: its weights are the from-scratch init itself (both
come from `subject.seed`), so its fine-tuned and from-scratch runs are the same run and D_T = 0
exactly; it would only double the cost. The text is tokenized and fed as its language of the run
(evaluation/languages.py): its tokenizer, and its language id for models with language embeddings.
"""
import dataclasses
import functools
import itertools
import os

import jax
import numpy as np

from xlm_jax.config import default_config
from xlm_jax.data.examples import pack_stream
from xlm_jax.data.streams import max_predictions
from xlm_jax.errors import ConfigError
from xlm_jax.evaluation import plots
from xlm_jax.evaluation.evaluator import EvalContext, Evaluator, Result
from xlm_jax.evaluation.heldout_mlm import masked_lm_loss_step
from xlm_jax.evaluation.inputs import read_lines
from xlm_jax.evaluation.subjects import random_init_params
from xlm_jax.parallel.mesh import batch_shards
from xlm_jax.train.builder import build_trainer

MASK_PROB, MASK_TOKEN_PROB, RANDOM_TOKEN_PROB = 0.15, 0.8, 0.1   # BERT / XLM-R
HELDOUT_MASK_SEED = 20_240_412    # fixed, not subject.seed: every model is scored on the same masks
FIRST_REGULAR_ID = 4              # random replacements are ids 4 .. vocab_size - 2 (as data/masking.py)


@dataclasses.dataclass
class Transfer:
    effective_bytes: float   # D_E
    transfer_bytes: float    # D_T = D_E - D_F
    fraction: float          # D_T / D_E
    bound: int               # 0: exact; +1: D_E, D_T are lower bounds; -1: upper bounds


def data_transfer(scratch_sizes, scratch_losses, finetuned_size: float, finetuned_loss: float) -> Transfer:
    """D_E, D_T = D_E - D_F and D_T / D_E for a fine-tuned point (D_F, loss) against a from-scratch curve.

    D_E is where the curve, piecewise linear in log(bytes), first comes down to the fine-tuned loss;
    outside the curve it is clamped to its ends and flagged (`bound`, module doc).
    """
    sizes, losses = np.asarray(scratch_sizes, np.float64), np.asarray(scratch_losses, np.float64)
    if len(sizes) < 2 or len(sizes) != len(losses) or np.any(np.diff(sizes) <= 0) or sizes[0] <= 0:
        raise ValueError(f"need a from-scratch curve of >= 2 increasing positive sizes with one loss each; "
                         f"got sizes {sizes.tolist()} and losses {losses.tolist()}")
    if losses[0] <= finetuned_loss:
        effective, bound = sizes[0], -1
    else:
        below = np.flatnonzero(losses <= finetuned_loss)
        if not len(below):
            effective, bound = sizes[-1], 1
        else:
            i = below[0] - 1    # the segment [i, i + 1] that crosses the fine-tuned loss
            t = (losses[i] - finetuned_loss) / (losses[i] - losses[i + 1])
            log_sizes = np.log(sizes)
            effective, bound = np.exp(log_sizes[i] + t * (log_sizes[i + 1] - log_sizes[i])), 0
    transfer = float(effective - finetuned_size)
    return Transfer(float(effective), transfer, transfer / float(effective), bound)


def mask_blocks(blocks: np.ndarray, rng: np.random.Generator, tokenizer, num_predictions: int) -> dict:
    """An MLM batch from [B, S] blocks: 15% of the non-special tokens of each row (randomized rounding),
    80% <mask> / 10% random / 10% kept; targets in num_predictions slots (weight 0 = empty slot)."""
    ids = blocks.copy()
    shape = (len(blocks), num_predictions)
    positions, targets, weights = np.zeros(shape, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.float32)
    for row, block in enumerate(blocks):
        maskable = np.flatnonzero(~np.isin(block, tokenizer.special_ids))
        count = min(num_predictions, int(MASK_PROB * len(maskable) + rng.random()))
        chosen = np.sort(rng.choice(maskable, count, replace=False))
        action = rng.random(count)
        random_ids = rng.integers(FIRST_REGULAR_ID, tokenizer.vocab_size - 1, count)
        ids[row, chosen] = np.where(action < MASK_TOKEN_PROB, tokenizer.mask_id,
                                    np.where(action < MASK_TOKEN_PROB + RANDOM_TOKEN_PROB, random_ids, block[chosen]))
        positions[row, :count], targets[row, :count], weights[row, :count] = chosen, block[chosen], 1.0
    return {"input_ids": ids, "masked_positions": positions, "masked_ids": targets, "masked_weights": weights}


def first_bytes(lines: list[str], size: int) -> list[str]:
    """The lines holding the first `size` bytes of UTF-8 text (newlines not counted), the last one cut
    at a character boundary."""
    taken, left = [], size
    for line in lines:
        data = line.encode("utf-8")
        if len(data) >= left:
            cut = data[:left].decode("utf-8", errors="ignore")
            return taken + [cut] if cut else taken
        taken.append(line)
        left -= len(data)
    return taken


class DataTransfer(Evaluator):
    kind = "data_transfer"
    language_option = "language"

    @classmethod
    def defaults(cls) -> dict:
        return {"text": "", "language": "", "heldout_lines": 200, "sizes": "2000,8000,32000", "steps": 200,
                "batch_size": 16, "seq_len": 128, "learning_rate": 5e-4, "warmup_steps": 20,
                "random_init_baseline": False}

    def check(self) -> None:
        self.texts  # noqa: B018  (reads and validates every input)

    def languages_used(self) -> list[str]:
        return [self.language]

    @functools.cached_property
    def sizes(self) -> list[int]:
        try:
            sizes = [int(s) for s in self.options.sizes.split(",") if s.strip()]
        except ValueError:
            sizes = []
        if len(sizes) < 2 or sizes[0] <= 0 or any(b <= a for a, b in itertools.pairwise(sizes)):
            raise ConfigError(f"config field `{self.field('sizes')}`: got {self.options.sizes!r}; give >= 2 "
                              "increasing positive byte counts, e.g. \"2000,8000,32000\"")
        return sizes

    @functools.cached_property
    def texts(self) -> tuple[list[str], list[str]]:
        """(training lines, held-out lines) of the text file."""
        o = self.options
        if not o.text:
            raise ConfigError(f"config field `{self.field('text')}`: set it to a target-language text file")
        for name in ("steps", "batch_size", "seq_len", "heldout_lines"):
            if o[name] < 1:
                raise ConfigError(f"config field `{self.field(name)}`: got {o[name]}; must be >= 1")
        if o.learning_rate <= 0:
            raise ConfigError(f"config field `{self.field('learning_rate')}`: got {o.learning_rate}; must be > 0")
        lines = read_lines(o.text, "target-language text")
        if o.heldout_lines >= len(lines):
            raise ConfigError(f"config field `{self.field('heldout_lines')}`: {o.heldout_lines} held-out lines, "
                              f"but {o.text} has only {len(lines)} lines")
        train, heldout = lines[:-o.heldout_lines], lines[-o.heldout_lines:]
        available = sum(len(line.encode("utf-8")) for line in train)
        if self.sizes[-1] > available:
            raise ConfigError(f"config field `{self.field('sizes')}`: {self.sizes[-1]} bytes asked for, but "
                              f"{o.text} has {available} bytes of training text (its last {o.heldout_lines} "
                              "lines are held out)")
        return train, heldout

    @property
    def language(self) -> str:
        return self.options.language or os.path.basename(self.options.text).split(".")[0]

    def _train_config(self, subject):
        """A full config for the framework's train step: the subject's model, this evaluator's training."""
        o, config = self.options, default_config()
        config.model.update(dict(subject.model_config))
        config.data.seq_len = o.seq_len
        t = config.train
        t.num_steps, t.batch_size, t.learning_rate = o.steps, o.batch_size, o.learning_rate
        t.warmup_steps, t.seed = min(o.warmup_steps, o.steps - 1), subject.seed
        config.mesh.rules = "dp"   # named only in state_shardings' errors; the rule table is subject.rules
        return config

    def _check_shapes(self, subject) -> None:
        o = self.options
        if o.seq_len > subject.model_config.max_len:
            raise ConfigError(f"config field `{self.field('seq_len')}`: {o.seq_len} is longer than the model's "
                              f"max_len {subject.model_config.max_len}")
        shards = batch_shards(subject.mesh, subject.rules)
        if o.batch_size % shards:
            raise ConfigError(f"config field `{self.field('batch_size')}`: {o.batch_size} must be a multiple of "
                              f"the {shards} batch shards of the mesh")

    def evaluate(self, context: EvalContext) -> Result:
        subject, o = context.subject, self.options
        self._check_shapes(subject)
        train_lines, heldout_lines = self.texts
        runner = _Runner(self._train_config(subject), subject, context.inputs(self.language), context.log, self.name)
        heldout = runner.heldout_batches(heldout_lines)
        scratch_params = random_init_params(subject.model_config, subject.mesh, subject.rules, subject.seed)
        curves = {"finetuned": [], "scratch": []}
        for size in self.sizes:
            blocks = runner.blocks(first_bytes(train_lines, size))
            for name, params in (("finetuned", subject.params), ("scratch", scratch_params)):
                trained = runner.train(params, blocks, f"{name} on {size} bytes")
                curves[name].append(runner.loss(trained, heldout))
                context.log(f"{self.name}: {name} on {size} bytes: held-out loss {curves[name][-1]:.4f}")
        transfers = [data_transfer(self.sizes, curves["scratch"], size, loss)
                     for size, loss in zip(self.sizes, curves["finetuned"])]
        headline = transfers[0]
        metrics = {"dt_bytes": headline.transfer_bytes, "effective_bytes": headline.effective_bytes,
                   "effective_fraction": headline.fraction, "bound": float(headline.bound),
                   "finetuned_bytes": float(self.sizes[0]), "finetuned_loss": curves["finetuned"][0],
                   "scratch_loss": curves["scratch"][0]}
        for size, transfer in zip(self.sizes, transfers):
            metrics[f"dt_bytes_{size}"], metrics[f"bound_{size}"] = transfer.transfer_bytes, float(transfer.bound)
        details = {"sizes": self.sizes, "scratch_losses": curves["scratch"], "finetuned_losses": curves["finetuned"],
                   "transfers": [dataclasses.asdict(t) for t in transfers],
                   "initial_loss": {"model": runner.loss(subject.params, heldout),
                                    "scratch": runner.loss(scratch_params, heldout)},
                   "heldout_lines": o.heldout_lines, "steps": o.steps}
        return Result(per_language={self.language: metrics}, summary=dict(metrics), details=details,
                      data_files=[o.text], artifacts=self._plot(context, curves))

    def _plot(self, context: EvalContext, curves) -> list[str]:
        if context.artifacts_dir is None:
            return []
        name = f"{self.name}_loss_vs_bytes.png"
        plots.line_chart(os.path.join(context.artifacts_dir, name),
                         f"{self.language}: held-out MLM loss after {self.options.steps} steps",
                         {"from scratch": (self.sizes, curves["scratch"]),
                          "fine-tuned from the model": (self.sizes, curves["finetuned"])},
                         xlabel="target-language training bytes", ylabel="held-out MLM loss", log_x=True)
        return [name]


class _Runner:
    """The framework's own train and eval steps, compiled once and shared by every run; the text is
    tokenized and fed as `inputs` (LanguageInputs: the target language's tokenizer and id)."""

    def __init__(self, config, subject, inputs, log, name: str):
        self.config, self.subject, self.inputs, self.log, self.name = config, subject, inputs, log, name
        self.trainer = build_trainer(config, subject.mesh, subject.rules)   # the default: masked LM alone
        self.rows = self.trainer.rows
        self.eval_step = masked_lm_loss_step(config.model, subject.mesh, subject.rules, self.trainer.shardings.params,
                                             self.rows)
        self.slots = max_predictions(config.data.seq_len, MASK_PROB)

    def blocks(self, lines: list[str]) -> np.ndarray:
        tokenizer = self.inputs.tokenizer
        return pack_stream(tokenizer.encode(lines), self.config.data.seq_len, tokenizer.bos_id,
                           tokenizer.eos_id, tokenizer.pad_id)

    def _put(self, batch: dict):
        if self.config.model.num_languages:
            batch = {**batch, "language_ids": np.full_like(batch["input_ids"], self.inputs.language_id)}
        return {k: jax.make_array_from_callback(v.shape, self.rows, lambda index, v=v: v[index])
                for k, v in batch.items()}

    def heldout_batches(self, lines: list[str]) -> list[dict]:
        """The held-out tail, masked once; padded with empty rows to whole batches."""
        blocks = self.blocks(lines)
        batch_size = self.config.train.batch_size
        padding = np.full((-len(blocks) % batch_size, blocks.shape[1]), self.subject.tokenizer.pad_id, np.int32)
        batch = mask_blocks(np.concatenate([blocks, padding]), np.random.default_rng(HELDOUT_MASK_SEED),
                            self.subject.tokenizer, self.slots)
        return [self._put({k: v[i:i + batch_size] for k, v in batch.items()})
                for i in range(0, len(batch["input_ids"]), batch_size)]

    def loss(self, params, batches: list[dict]) -> float:
        terms = [jax.device_get(self.eval_step(params, batch)) for batch in batches]
        return float(sum(t["loss_sum"] for t in terms) / max(sum(t["count"] for t in terms), 1.0))

    def train(self, params, blocks: np.ndarray, what: str):
        """`steps` updates from params on batches of blocks drawn with replacement, masked afresh each
        step; step t's batch depends only on (subject.seed, t), so both runs of a size see the same."""
        t = self.config.train
        state = self.trainer.state_from_params(params)
        for step in range(t.num_steps):
            rng = np.random.default_rng([self.subject.seed, step])
            rows = blocks[rng.integers(0, len(blocks), t.batch_size)]
            batch = self._put(mask_blocks(rows, rng, self.subject.tokenizer, self.slots))
            state, metrics = self.trainer.step(state, {self.trainer.streams[0].name: batch})
            if (step + 1) % max(t.num_steps // 4, 1) == 0:
                self.log(f"{self.name}: {what}: step {step + 1}/{t.num_steps}, loss {float(metrics['loss']):.3f}")
        return state.params
