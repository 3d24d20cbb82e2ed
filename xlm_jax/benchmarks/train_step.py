"""Steps/s, tokens/s, MFU and peak memory of the xlm_jax train step on random tokens.

  python -m xlm_jax.benchmarks.train_step --layers=6 --hidden=256 --heads=4 --ffn=1024 \\
      --vocab=32000 --seq=128 --batch=16 --dtype=float32 --compare=hf_flax,hf_torch

Random token ids with 15% masked positions stand in for data, so this measures the
model, optimizer and sharding alone. The step is the one training uses (AdamW,
clipping, non-finite guard, dropout 0.1), on a mesh of all local devices (`dp`).

`--compare` also trains transformers' XLM-R masked LM (Flax and/or PyTorch, see
peers.py) on the same batch in the same process: each system runs once to compile
and warm up, then the systems take turns, `--repeats` rounds of `--steps` steps, and
each one's best round is reported. The last line is `ratio_vs_<peer>=X ...`: our
tokens/s over the peer's.
"""
import os
import statistics
import time
from typing import NamedTuple

import jax
import numpy as np
from absl import flags

from xlm_jax import cli
from xlm_jax.benchmarks import peers
from xlm_jax.config import default_config, validate
from xlm_jax.data.masking import max_predictions
from xlm_jax.errors import XlmJaxError
from xlm_jax.models.heads import MaskedLM
from xlm_jax.models.vocab_padding import vocab_padding_params
from xlm_jax.parallel.mesh import batch_sharding, make_mesh
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.train import metrics as metrics_lib
from xlm_jax.train.optim import make_optimizer
from xlm_jax.train.state import count_params, create_train_state, state_shardings
from xlm_jax.train.step import make_train_step

flags.DEFINE_integer("layers", 6, "Transformer layers.")
flags.DEFINE_integer("hidden", 256, "Hidden size.")
flags.DEFINE_integer("heads", 4, "Attention heads.")
flags.DEFINE_integer("ffn", 1024, "Feed-forward size.")
flags.DEFINE_integer("vocab", 32000, "Vocabulary size.")
flags.DEFINE_integer("seq", 128, "Sequence length.")
flags.DEFINE_integer("batch", 16, "Global batch size.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_enum("remat", "none", ["none", "full", "dots_saveable",
                                    "dots_with_no_batch_dims_saveable"], "Rematerialization.")
flags.DEFINE_float("dropout", 0.1, "Dropout rate (hidden and attention), as in pretraining.")
flags.DEFINE_string("rules", "dp", "Logical-axis rules preset (dp, fsdp, fsdp_tp).")
flags.DEFINE_integer("steps", 20, "Timed steps per repeat.")
flags.DEFINE_integer("repeats", 3, "Timed repeats; the best is reported.")
flags.DEFINE_list("compare", [], "Peers to run on the same batch, alternating with ours: "
                  "hf_flax, hf_torch (needs the `hf` extra).")
FLAGS = flags.FLAGS


def benchmark_config():
    config = default_config()
    m = config.model
    m.num_layers, m.hidden_size, m.num_heads, m.mlp_dim = FLAGS.layers, FLAGS.hidden, FLAGS.heads, FLAGS.ffn
    m.vocab_size, m.max_len, m.dtype, m.remat = FLAGS.vocab, max(512, FLAGS.seq), FLAGS.dtype, FLAGS.remat
    m.dropout_rate = m.attention_dropout_rate = FLAGS.dropout
    config.data.seq_len = FLAGS.seq
    config.train.batch_size = FLAGS.batch
    config.train.num_steps = 10**6
    config.mesh.rules = FLAGS.rules
    return validate(config)


def random_batch(config, rng: np.random.Generator) -> dict:
    """Token ids in the non-special range with `mask_prob` of positions to predict."""
    b, s, v = config.train.batch_size, config.data.seq_len, config.model.vocab_size
    p = max_predictions(s, config.data.mask_prob)
    positions = np.sort(np.stack([rng.choice(np.arange(1, s), p, replace=False) for _ in range(b)]), axis=1)
    input_ids = rng.integers(4, v - 1, (b, s)).astype(np.int32)
    input_ids[:, 0] = 0
    masked_ids = np.take_along_axis(input_ids, positions, axis=1)
    np.put_along_axis(input_ids, positions, v - 1, axis=1)
    return {"input_ids": input_ids, "masked_positions": positions.astype(np.int32),
            "masked_ids": masked_ids, "masked_weights": np.ones((b, p), np.float32)}


def make_ours(config):
    """(run(num_steps) -> last metrics, parameter count): the training step on a random batch."""
    mesh = make_mesh(config.mesh)
    rules = logical_axis_rules(config.mesh.rules)
    model, optimizer = MaskedLM(config.model), make_optimizer(config.train)
    _, shardings = state_shardings(model, optimizer, config, mesh, rules)
    state = create_train_state(model, optimizer, config, mesh, rules, shardings)
    num_params = count_params(state.params)
    rows = batch_sharding(mesh, rules)
    step = make_train_step(model, optimizer, config, mesh, rules, shardings, rows)
    batch = jax.device_put(random_batch(config, np.random.default_rng(0)), rows)

    def run(num_steps):
        nonlocal state
        for _ in range(num_steps):
            state, metrics = step(state, batch)
        return jax.block_until_ready(metrics)

    return run, num_params


class Round(NamedTuple):
    """Seconds per step in one timed round: wall clock, CPU of all threads, and the
    system part of that CPU (on CPU hosts mostly page faults: XLA:CPU and PyTorch take
    big buffers from fresh mmaps, which the kernel zero-fills page by page)."""
    wall: float
    cpu: float
    system: float


def timed(run, num_steps: int) -> Round:
    """One round of num_steps; only this system runs meanwhile, so the process's CPU is its."""
    start, cpu_start = time.perf_counter(), os.times()
    run(num_steps)
    wall, cpu_end = time.perf_counter() - start, os.times()
    # Differences first: summing before subtracting can round 0 to -1e-16 ("-0.00").
    user, system = cpu_end.user - cpu_start.user, cpu_end.system - cpu_start.system
    return Round(wall / num_steps, (user + system) / num_steps, system / num_steps)


def main(argv):
    del argv
    config = benchmark_config()
    for name in FLAGS.compare:
        if name not in peers.PEERS:
            raise XlmJaxError(f"--compare: unknown peer {name!r}; known: {', '.join(peers.PEERS)}")
        peers.check_installed(name)
    tokens = config.train.batch_size * config.data.seq_len
    ours, num_params = make_ours(config)
    systems = {"xlm_jax": ours}
    # The peers see the very batch ours trains on (same ids, same masked positions).
    batch = random_batch(config, np.random.default_rng(0))
    for name in FLAGS.compare:
        systems[name] = peers.make_peer(name, config, batch)

    compile_s, first = {}, {}
    for name, run in systems.items():  # compile and warm up each once
        start = time.perf_counter()
        first[name] = run(1)
        compile_s[name] = time.perf_counter() - start
    rounds = {name: [] for name in systems}
    for _ in range(FLAGS.repeats):  # alternate, so load on this machine hits every system alike
        for name, run in systems.items():
            rounds[name].append(timed(run, FLAGS.steps))
    best_round = {name: min(r, key=lambda r: r.wall) for name, r in rounds.items()}
    best = {name: r.wall for name, r in best_round.items()}

    tokens_per_s = tokens / best["xlm_jax"]
    flops = metrics_lib.flops_per_token(config.model, config.data.seq_len, config.data.mask_prob)
    peak, source = metrics_lib.peak_flops()
    padding = vocab_padding_params(config.model)
    print(f"model: {(num_params - padding) / 1e6:.1f}M params (+{padding:,} of vocabulary padding), "
          f"layers={FLAGS.layers} "
          f"hidden={FLAGS.hidden} heads={FLAGS.heads} ffn={FLAGS.ffn} vocab={FLAGS.vocab} "
          f"seq={FLAGS.seq} batch={FLAGS.batch} dtype={FLAGS.dtype} remat={FLAGS.remat}")
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; peak "
          f"{peak / 1e12:.3f} TFLOP/s ({source})")
    print(f"compile: {compile_s['xlm_jax']:.1f}s  loss after warm-up: "
          f"{float(first['xlm_jax']['loss']):.3f}")
    print(f"xlm_jax: {1 / best['xlm_jax']:.2f} steps/s  {tokens_per_s:,.0f} tokens/s  "
          f"MFU {100 * tokens_per_s * flops / peak:.1f}%  "
          f"peak memory {metrics_lib.peak_memory_bytes() / 2**30:.2f} GiB"
          + (" (the process's, peers included)" if FLAGS.compare else "")
          + f"  CPU {best_round['xlm_jax'].cpu:.2f} s/step ({best_round['xlm_jax'].system:.2f} system)")
    if not FLAGS.compare:
        return
    print(f"timing: best of {FLAGS.repeats} alternating rounds of {FLAGS.steps} steps per system")
    for name in systems:
        median = statistics.median(r.wall for r in rounds[name])
        print(f"{name}: {tokens / best[name]:,.0f} tokens/s best, {tokens / median:,.0f} median  "
              f"CPU {best_round[name].cpu:.2f} s/step ({best_round[name].system:.2f} system)  "
              f"(compile+first step {compile_s[name]:.1f}s, first loss "
              f"{float(first[name]['loss'] if name == 'xlm_jax' else first[name]):.3f})")
    ratios = {name: best[name] / best["xlm_jax"] for name in FLAGS.compare}
    print(" ".join(f"ratio_vs_{name}={ratio:.2f}" for name, ratio in ratios.items()))


if __name__ == "__main__":
    cli.run(main)
