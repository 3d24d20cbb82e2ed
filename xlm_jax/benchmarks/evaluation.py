"""Evaluation speed: sentence encoding (what retrieval uses), the retrieval evaluation, fine-tuning.

  python -m xlm_jax.benchmarks.evaluation --workdir=runs/demo   # the trained demo model
  python -m xlm_jax.benchmarks.evaluation                       # demo architecture, random weights

The model is a run directory's newest checkpoint (`--workdir`, loaded with xlm_jax.load),
or, without one, `--layers/--hidden/--heads/--ffn` (default: configs/demo.py's 3 x 256)
with random weights and the byte-level tokenizer (261 ids): the same shapes of work,
longer token sequences than the demo's SentencePiece vocabulary gives.

1. Encoding: both sides of the first `--pairs` Tatoeba pairs of each of `--languages`,
   the middle layer (XTREME's retrieval layer), mean-pooled, as retrieval encodes them
   with `SentenceEncoder` (one call over all sentences). The first call, which compiles
   one program per length bucket and batch shape, is timed apart from the warm calls. The
   peers encode the same sentences with the same weights, from the texts (tokenizing is
   part of every system's time):
   - naive_xlm_jax: xlm_jax's encoder before SentenceEncoder, called once per side of a
     language pair as a loop over languages calls it: the whole list padded to its
     longest sentence, one batch, every layer's token states back to the host, mean-pooled
     in numpy. Each distinct longest length compiles anew.
   - hf_torch: transformers' PyTorch `XLMRobertaModel` on the weights export_hf writes,
     fed our token ids sorted by length in batches of the sizes ours uses, each padded to
     its longest, `output_hidden_states=True`, the same layer mean-pooled in torch.
   Every peer's vectors must match ours (max |difference| <= `--tolerance`), or the
   benchmark stops: comparing different computations would be worthless. Then the systems
   take turns, `--repeats` rounds each, and each one's best round is reported.
2. Retrieval: the wall time of the whole "retrieval" evaluation (Tatoeba accuracy, no
   random-init baseline) through `EvaluationRunner`, as `--mode=evaluate` runs it, from a
   fresh runner: reading the files, compiling, encoding and scoring.
3. Fine-tuning: tokens/s of the fine-tuning train step (evaluation/finetune.py; a 3-label
   SequenceClassifier as XNLI's) against the pretraining step (train/step.py) of the same
   architecture, at `--batch` x `--seq` tokens, on one fixed batch of random ids each,
   alternating `--repeats` rounds of `--steps` steps.

The naive peer takes most of the time (with runs/demo on 2 cores, ~17 of ~21 minutes;
--compare=hf_torch leaves it out). The last line is
`ratio_vs_naive_xlm_jax=X ratio_vs_hf_torch=Y ratio_finetune_vs_pretrain=Z`: our
sentences/s over each compared peer's, and the fine-tuning step's tokens/s over pretraining's.

Why one file: one benchmark command; its timers (encoding, retrieval, fine-tuning, each
against the same peers) share the set-up of one subject and print one table.
"""
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np
from absl import flags

from xlm_jax import api, cli
from xlm_jax.benchmarks import peers
from xlm_jax.benchmarks.train_step import make_ours, timed
from xlm_jax.config import default_config
from xlm_jax.train.builder import validate
from xlm_jax.data.tokenizers import ByteTokenizer, tokenizer_kind
from xlm_jax.errors import XlmJaxError
from xlm_jax.evaluation import finetune, inputs
from xlm_jax.evaluation.encoding import (
    SentenceEncoder,
    make_context,
    middle_layer,
    token_rows,
)
from xlm_jax.evaluation.evaluator import Subject
from xlm_jax.evaluation.registry import build_evaluators
from xlm_jax.evaluation.runner import EvaluationRunner
from xlm_jax.evaluation.subjects import random_init_params
from xlm_jax.interop.hf import hf_config, hf_weights
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.models.task_heads import SequenceClassifier
from xlm_jax.parallel.mesh import make_mesh
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.train import metrics as metrics_lib

PEERS = ("naive_xlm_jax", "hf_torch")
XNLI_LABELS = 3

# train_step.py defines --layers, --batch, ... on import; ours replace them (allow_override:
# make_ours and timed read no flags).
SHARED = {"allow_override": True}
flags.DEFINE_string("workdir", "", "Run directory to measure (its newest checkpoint); \"\" = the "
                    "--layers/... architecture with random weights and the byte tokenizer.")
flags.DEFINE_integer("layers", 3, "Transformer layers, without --workdir (configs/demo.py: 3).", **SHARED)
flags.DEFINE_integer("hidden", 256, "Hidden size, without --workdir (configs/demo.py: 256).", **SHARED)
flags.DEFINE_integer("heads", 4, "Attention heads, without --workdir (configs/demo.py: 4).", **SHARED)
flags.DEFINE_integer("ffn", 1024, "Feed-forward size, without --workdir (configs/demo.py: 1024).", **SHARED)
flags.DEFINE_string("data", "../shared/data/tatoeba", "Tatoeba directory (tatoeba.<xxx>-eng.<xxx>).")
flags.DEFINE_list("languages", "deu,fra,spa,rus,cmn,ara,hin,jpn,tur,vie", "Tatoeba languages.")
flags.DEFINE_integer("pairs", 1000, "Pairs per language (both sides are encoded).", lower_bound=1)
flags.DEFINE_list("compare", list(PEERS), f"Encoding peers: {', '.join(PEERS)} (hf_torch needs the "
                  "`hf` extra).", **SHARED)
flags.DEFINE_float("tolerance", 1e-4, "Largest |peer - ours| allowed in any vector component.")
flags.DEFINE_integer("repeats", 3, "Timed rounds per system; the best is reported.", lower_bound=1, **SHARED)
flags.DEFINE_integer("batch", 32, "Fine-tuning / pretraining batch (XTREME's XNLI: 32).", lower_bound=1,
                     **SHARED)
flags.DEFINE_integer("seq", 128, "Fine-tuning / pretraining tokens per example (XTREME: 128).",
                     lower_bound=8, **SHARED)
flags.DEFINE_integer("steps", 10, "Timed train steps per round.", lower_bound=1, **SHARED)
FLAGS = flags.FLAGS


class CompileCounter:
    """Counts XLA compilations in this process (jax.monitoring reports each one)."""

    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1


# ---------------------------------------------------------------- the model and the sentences


def replicated_mesh():
    """All local devices on the batch axis (rules `dp`), as xlm_jax.load places a model."""
    mesh_config = default_config().mesh
    mesh_config.data, mesh_config.fsdp, mesh_config.tensor = -1, 1, 1
    return make_mesh(mesh_config), logical_axis_rules("dp")


def load_subject(log) -> tuple[Subject, str]:
    """(the model to measure, a line describing it)."""
    if FLAGS.workdir:
        model = api.load(FLAGS.workdir, log=log)
        m = model.config.model
        return model.subject, (f"{FLAGS.workdir} step {model.step}: layers={m.num_layers} hidden={m.hidden_size} "
                               f"heads={m.num_heads} ffn={m.mlp_dim} vocab={m.vocab_size} "
                               f"({tokenizer_kind(model.tokenizer)} tokenizer)")
    m = default_config().model
    m.num_layers, m.hidden_size, m.num_heads, m.mlp_dim = FLAGS.layers, FLAGS.hidden, FLAGS.heads, FLAGS.ffn
    m.vocab_size = ByteTokenizer.vocab_size
    m.dropout_rate = m.attention_dropout_rate = 0.0   # as configs/demo.py
    mesh, rules = replicated_mesh()
    subject = Subject(m, random_init_params(m, mesh, rules, seed=0), ByteTokenizer(), mesh, rules)
    return subject, (f"random weights, layers={m.num_layers} hidden={m.hidden_size} heads={m.num_heads} "
                     f"ffn={m.mlp_dim}, byte tokenizer (vocab {m.vocab_size}); --workdir=runs/demo "
                     "measures the trained demo model")


def read_sides() -> list[list[str]]:
    """Each language's two sides (its own, then English), the first --pairs lines of each."""
    if not os.path.isdir(FLAGS.data):
        raise XlmJaxError(f"--data={FLAGS.data}: no such directory (a Tatoeba directory of "
                          "tatoeba.<xxx>-eng.<xxx> files, see ../shared/data/README.md)")
    missing = [lang for lang in FLAGS.languages
               if not os.path.isfile(os.path.join(FLAGS.data, f"tatoeba.{lang}-eng.{lang}"))]
    if missing or not FLAGS.languages:
        raise XlmJaxError(f"--languages: no Tatoeba files for {', '.join(missing) or '(none given)'} in "
                          f"{FLAGS.data} (expected tatoeba.<xxx>-eng.<xxx>, e.g. tatoeba.deu-eng.deu)")
    sides = []
    for lang in FLAGS.languages:
        paths = [os.path.join(FLAGS.data, f"tatoeba.{lang}-eng.{side}") for side in (lang, "eng")]
        source, target = (inputs.read_lines(path, f"Tatoeba file of language {lang!r}") for path in paths)
        inputs.check_aligned(paths[0], source, paths[1], target)
        sides += [source[:FLAGS.pairs], target[:FLAGS.pairs]]
    return sides


# ---------------------------------------------------------------- the encoders


def encoder_batches(encoder: SentenceEncoder, lengths: np.ndarray) -> list[np.ndarray]:
    """The sentence indices of each call SentenceEncoder makes for rows of these lengths (its own
    plan, `chunks`, over the sentences sorted by length)."""
    order = np.argsort(lengths, kind="stable")
    return [order[start:start + count] for start, count, _ in encoder.chunks(lengths[order])]


def make_naive(subject: Subject, layer: int):
    """encode(sides) -> [N, hidden]: the whole list of each side padded to its longest sentence,
    one batch, every layer's token states to the host, mean-pooled there."""
    module, tokenizer = MaskedLM(subject.model_config), subject.tokenizer
    hidden_states = jax.jit(lambda params, ids: module.apply(
        {"params": params}, ids, method=lambda m, ids: m.encoder(ids, output_hidden_states=True)[1]))

    def encode_side(texts):
        rows = token_rows(tokenizer, texts, subject.model_config.max_len)
        ids = np.full((len(rows), max(map(len, rows))), tokenizer.pad_id, np.int32)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
        states = np.asarray(hidden_states(subject.params, ids))[layer]
        mask = (ids != tokenizer.pad_id)[..., None]
        return (states * mask).sum(axis=1) / mask.sum(axis=1)

    return lambda sides: np.concatenate([encode_side(texts) for texts in sides])


def make_hf_torch(subject: Subject, layer: int, encoder: SentenceEncoder, directory: str):
    """encode(sides) -> [N, hidden]: transformers' XLMRobertaModel (PyTorch, CPU) on our exported
    weights and our token ids, in ours' batches, each padded to its own longest sentence."""
    transformers, torch = require_hf()
    torch.set_num_threads(os.cpu_count())
    write_hf_weights(subject, directory)
    model = transformers.XLMRobertaModel.from_pretrained(
        directory, add_pooling_layer=False, output_hidden_states=True).eval()
    pad_id, max_len = subject.tokenizer.pad_id, subject.model_config.max_len

    @torch.inference_mode()
    def encode(sides):
        rows = token_rows(subject.tokenizer, [text for texts in sides for text in texts], max_len)
        vectors = np.empty((len(rows), subject.model_config.hidden_size), np.float32)
        for batch in encoder_batches(encoder, np.array([len(r) for r in rows])):
            ids = np.full((len(batch), max(len(rows[i]) for i in batch)), pad_id, np.int64)
            for j, i in enumerate(batch):
                ids[j, :len(rows[i])] = rows[i]
            ids = torch.from_numpy(ids)
            mask = (ids != pad_id).long()
            states = model(input_ids=ids, attention_mask=mask).hidden_states[layer]
            weights = mask[..., None].to(states.dtype)
            vectors[batch] = ((states * weights).sum(1) / weights.sum(1)).numpy()
        return vectors

    return encode


def write_hf_weights(subject: Subject, directory: str) -> None:
    """The config.json and model.safetensors export_hf writes (not its tokenizer files: the peer
    is fed our ids, and export_hf cannot write the byte tokenizer's)."""
    from safetensors.numpy import save_file

    os.makedirs(directory)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config(subject.model_config), f)
    save_file(hf_weights(subject.model_config, subject.params), os.path.join(directory, "model.safetensors"),
              metadata={"format": "pt"})


def require_hf():
    peers.check_installed("hf_torch")
    import torch
    import transformers
    return transformers, torch


def check_agreement(vectors: dict[str, np.ndarray]) -> dict[str, float]:
    """Max |peer - ours| per peer; XlmJaxError if any exceeds --tolerance."""
    diffs = {name: float(np.max(np.abs(v - vectors["xlm_jax"]))) for name, v in vectors.items()
             if name != "xlm_jax"}
    bad = {name: d for name, d in diffs.items() if not d <= FLAGS.tolerance}
    if bad:
        raise XlmJaxError("the peers' sentence vectors differ from ours (" + ", ".join(
            f"{name}: max |diff| {d:.2e}" for name, d in bad.items()) + f" > --tolerance={FLAGS.tolerance}): "
            "they do not compute the same thing, so their speeds cannot be compared")
    return diffs


# ---------------------------------------------------------------- retrieval and fine-tuning


def retrieval_run(subject: Subject, log) -> tuple[float, dict]:
    """(wall seconds, record) of the whole retrieval evaluation, from a fresh runner."""
    evals = ml_collections.ConfigDict({"tatoeba": {
        "kind": "retrieval", "data": FLAGS.data, "languages": ",".join(FLAGS.languages),
        "max_pairs": FLAGS.pairs, "random_init_baseline": False}})
    start = time.perf_counter()
    record = EvaluationRunner(build_evaluators(evals), None, log).run(subject)["tatoeba"]
    return time.perf_counter() - start, record


def make_finetune(subject: Subject):
    """run(num_steps) -> last metrics: the fine-tuning train step (FineTune's compiled program, a
    SequenceClassifier with XNLI's 3 labels) on one batch of --batch random examples of --seq tokens."""
    options = ml_collections.ConfigDict({**finetune.FINETUNE_OPTIONS, "batch_size": FLAGS.batch,
                                         "seq_len": FLAGS.seq, "steps": 10**6})
    tuner = finetune.FineTune(make_context(subject), SequenceClassifier(subject.model_config, XNLI_LABELS),
                              finetune.budget(options, FLAGS.batch), "benchmark")
    rng, t = np.random.default_rng(0), subject.tokenizer
    examples = finetune.Examples(
        ids=[np.r_[t.bos_id, rng.integers(4, subject.model_config.vocab_size - 1, FLAGS.seq - 2), t.eos_id]
             .astype(np.int32) for _ in range(FLAGS.batch)],
        labels=list(rng.integers(0, XNLI_LABELS, FLAGS.batch)))
    host_batch = finetune.padded_batch(examples, np.arange(FLAGS.batch), tuner.rows, FLAGS.seq, t.pad_id)
    sharding = tuner.programs.rows_sharding
    batch = {key: jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
             for key, value in host_batch.items()}
    state, dropout_key = tuner.initial_state(), jax.random.key(subject.seed + 1)

    def run(num_steps):
        nonlocal state
        for _ in range(num_steps):
            state, metrics = tuner.programs.step(state, batch, dropout_key)
        return jax.block_until_ready(metrics)

    return run


def pretraining_config(model_config):
    """The train-step benchmark's config for this architecture at --batch x --seq."""
    config = default_config()
    config.model = ml_collections.ConfigDict(model_config.to_dict())
    config.data.seq_len = FLAGS.seq
    config.train.batch_size = FLAGS.batch
    config.train.num_steps = 10**6
    config.mesh.rules = "dp"
    return validate(config)


# ---------------------------------------------------------------- timing


def first_runs(systems: dict, num_steps: int, compiles: CompileCounter, log) -> dict[str, tuple]:
    """name -> (seconds, compilations, result) of each system's first run(num_steps)."""
    first = {}
    for name, run in systems.items():
        count, start = compiles.count, time.perf_counter()
        result = run(num_steps)
        first[name] = (time.perf_counter() - start, compiles.count - count, result)
        log(f"{name}: first run {first[name][0]:.1f}s, {first[name][1]} compilations")
    return first


def alternating_rounds(systems: dict, num_steps: int) -> dict[str, list]:
    """name -> --repeats timed Rounds of run(num_steps), taking turns so that load on this
    machine hits every system alike."""
    rounds = {name: [] for name in systems}
    for _ in range(FLAGS.repeats):
        for name, run in systems.items():
            rounds[name].append(timed(run, num_steps))
    return rounds


def calls(encode, sides):
    """run(num_calls) -> the last vectors, for `timed`."""
    def run(num_calls):
        for _ in range(num_calls):
            vectors = encode(sides)
        return vectors
    return run


def encoding_systems(subject: Subject, layer: int, encoder: SentenceEncoder, export_dir: str) -> dict:
    """name -> encode(sides) -> [N, hidden], ours first, then the --compare peers."""
    def ours(sides):
        return encoder(subject.params, [text for texts in sides for text in texts], layer)[0]

    systems = {"xlm_jax": ours}
    if "naive_xlm_jax" in FLAGS.compare:
        systems["naive_xlm_jax"] = make_naive(subject, layer)
    if "hf_torch" in FLAGS.compare:
        systems["hf_torch"] = make_hf_torch(subject, layer, encoder, os.path.join(export_dir, "hf"))
    return systems


def measure_encoding(subject: Subject, sides: list[list[str]], compiles: CompileCounter, log) -> dict:
    """Prints each system's sentences/s and the peers' agreement; returns name -> best Round."""
    m = subject.model_config
    layer = middle_layer(m.num_layers)
    texts = [text for texts in sides for text in texts]
    lengths = np.array([len(r) for r in token_rows(subject.tokenizer, texts, m.max_len)])
    print(f"sentences: {len(texts):,} ({FLAGS.pairs} pairs x {len(FLAGS.languages)} languages, both sides, "
          f"from {FLAGS.data}), {lengths.sum():,} tokens (mean {lengths.mean():.1f}, longest {lengths.max()}); "
          f"layer {layer} of {m.num_layers} (the middle), mean-pooled", flush=True)
    encoder = SentenceEncoder(m, subject.tokenizer, subject.mesh, subject.rules)
    export_dir = tempfile.mkdtemp(prefix="xlm_jax_hf_")
    try:
        systems = {name: calls(encode, sides)
                   for name, encode in encoding_systems(subject, layer, encoder, export_dir).items()}
        log("encoding: first calls")
        first = first_runs(systems, 1, compiles, log)
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)
    diffs = check_agreement({name: result for name, (_, _, result) in first.items()})
    log("encoding: alternating rounds")
    rounds = alternating_rounds(systems, 1)
    best = {name: min(r, key=lambda r: r.wall) for name, r in rounds.items()}
    print(f"timing: best of {FLAGS.repeats} alternating rounds of one call over all sentences per system")
    for name in systems:
        seconds, compiled, _ = first[name]
        median = statistics.median(r.wall for r in rounds[name])
        print(f"{name}: {len(texts) / best[name].wall:,.0f} sentences/s  {lengths.sum() / best[name].wall:,.0f} "
              f"tokens/s best, {len(texts) / median:,.0f} sentences/s median  CPU {best[name].cpu:.2f} s/call  "
              f"(first call {seconds:.1f}s" + ("" if name == "hf_torch" else f", {compiled} compiled shapes") + ")")
    if diffs:
        print("agreement with xlm_jax: " + ", ".join(f"{name} max |diff| {d:.1e}" for name, d in diffs.items())
              + f" (tolerance {FLAGS.tolerance:.0e})", flush=True)
    return best


def measure_retrieval(subject: Subject, compiles: CompileCounter, log) -> None:
    log("retrieval: the whole evaluation")
    count = compiles.count
    seconds, record = retrieval_run(subject, log)
    print(f"retrieval: {len(FLAGS.languages)} languages x {FLAGS.pairs} pairs in {seconds:.1f}s wall "
          f"(fresh runner: reading, {compiles.count - count} compilations, encoding, scoring), "
          f"mean acc {record['summary']['acc']:.4f}", flush=True)


def measure_training(subject: Subject, compiles: CompileCounter, log) -> dict[str, float]:
    """Prints the fine-tuning and pretraining steps' tokens/s; returns name -> best seconds per round."""
    log("fine-tuning and pretraining steps: first steps, then alternating rounds")
    systems = {"finetune": make_finetune(subject), "pretrain": make_ours(pretraining_config(subject.model_config))[0]}
    first = first_runs(systems, FLAGS.steps, compiles, log)
    best = {name: min(r.wall for r in rounds) for name, rounds in alternating_rounds(systems, FLAGS.steps).items()}
    tokens = FLAGS.batch * FLAGS.seq
    for name, what in (("finetune", f"fine-tuning step (SequenceClassifier, {XNLI_LABELS} labels)"),
                       ("pretrain", "pretraining step (MLM, same architecture, random weights)")):
        print(f"{what}: {tokens / best[name]:,.0f} tokens/s  batch {FLAGS.batch} x seq {FLAGS.seq}  "
              f"(compile+first {FLAGS.steps} steps {first[name][0]:.1f}s, loss {float(first[name][2]['loss']):.3f})",
              flush=True)
    return best


def main(argv):
    del argv
    log = functools.partial(print, file=sys.stderr, flush=True)
    for name in FLAGS.compare:
        if name not in PEERS:
            raise XlmJaxError(f"--compare: unknown peer {name!r}; known: {', '.join(PEERS)}")
    if "hf_torch" in FLAGS.compare:
        require_hf()
    sides = read_sides()
    subject, description = load_subject(log)
    if FLAGS.seq > subject.model_config.max_len:
        raise XlmJaxError(f"--seq={FLAGS.seq}: longer than the model's max_len ({subject.model_config.max_len})")
    compiles = CompileCounter()
    print(f"model: {description}")
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.2f} at the start (other processes slow PyTorch most)")
    encoding = measure_encoding(subject, sides, compiles, log)
    measure_retrieval(subject, compiles, log)
    training = measure_training(subject, compiles, log)
    print(f"peak memory {metrics_lib.peak_memory_bytes() / 2**30:.2f} GiB (the process's, peers included)")
    ratios = {f"vs_{name}": encoding[name].wall / encoding["xlm_jax"].wall for name in FLAGS.compare}
    ratios["finetune_vs_pretrain"] = training["pretrain"] / training["finetune"]
    print(" ".join(f"ratio_{name}={ratio:.2f}" for name, ratio in ratios.items()))


if __name__ == "__main__":
    cli.run(main)
