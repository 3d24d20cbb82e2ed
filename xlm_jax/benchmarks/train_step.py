"""Steps/s, tokens/s, MFU and peak memory of the xlm_jax train step on random tokens.

  python -m xlm_jax.benchmarks.train_step --layers=6 --hidden=256 --heads=4 --ffn=1024 \\
      --vocab=32000 --seq=128 --batch=16 --dtype=float32 --compare=hf_flax,hf_torch
  python -m xlm_jax.benchmarks.train_step --objectives=mlm,tlm,xlco
  python -m xlm_jax.benchmarks.train_step --preset=xlmr_base --batch=64 --steps_per_call=4

Random token ids with 15% masked positions stand in for data, so this measures the
model, optimizer and sharding alone. The step is the one training uses (AdamW,
clipping, non-finite guard, dropout 0.1), on a mesh of all local devices (`dp`).
`--objectives` trains that mix (weight 1 each, every objective's batch of --batch rows
each step, --schedule=sum): each objective's own step is timed too, and the mix's model
FLOPs are printed by part (XLCo's forward-only key encoder on its own line).

`--preset=xlmr_base|xlmr_large` takes the recipe's model (configs/<preset>.py: sizes,
vocabulary of 250,002, remat, bf16) and its sequence length of 512; flags given on the
command line still win, and --batch stays a one-chip batch (16 unless given), not the
recipe's global 8192. `--steps_per_call=k` runs k updates per jitted call, as
train.steps_per_call does; steps, step time and tokens/s still count updates.

`--compare` also trains transformers' XLM-R masked LM (Flax and/or PyTorch, see
peers.py) on the same batch in the same process: each system runs once to compile
and warm up, then the systems take turns, `--repeats` rounds of `--steps` steps, and
each one's best round is reported. The last line is `ratio_vs_<peer>=X ...`: our
tokens/s over the peer's.
"""
import os
import pathlib
import statistics
import time
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from absl import flags

from xlm_jax import cli
from xlm_jax.benchmarks import peers
from xlm_jax.config import default_config, sibling_config
from xlm_jax.data.streams import max_predictions, stream_fields
from xlm_jax.errors import XlmJaxError
from xlm_jax.models.vocab_padding import vocab_padding_params
from xlm_jax.objectives.registry import streams
from xlm_jax.parallel.mesh import make_mesh
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.train import metrics as metrics_lib
from xlm_jax.train.builder import build_trainer, validate
from xlm_jax.train.state import count_params

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
flags.DEFINE_enum("attention", "xla", ["xla", "cudnn", "splash"], "model.attention; the fused kernels "
                  "(cudnn, splash) have no attention dropout, so it is 0 with them (hidden dropout stays).")
flags.DEFINE_string("rules", "dp", "Logical-axis rules preset (dp, fsdp, fsdp_tp).")
flags.DEFINE_integer("steps", 20, "Timed steps per repeat.")
flags.DEFINE_integer("repeats", 3, "Timed repeats; the best is reported.")
flags.DEFINE_list("compare", [], "Peers to run on the same batch, alternating with ours: "
                  "hf_flax, hf_torch (needs the `hf` extra; MLM alone).")
flags.DEFINE_list("objectives", ["mlm"], "Objectives trained together (weight 1 each): mlm, tlm, xlco, "
                  "adversarial, pair_classification.")
flags.DEFINE_integer("queue_size", 16_384, "XLCo's queue of negatives (a multiple of 2 x --batch).")
flags.DEFINE_integer("steps_per_call", 1, "Updates per jitted call (train.steps_per_call); --steps must be "
                     "a multiple of it.")
flags.DEFINE_enum("preset", "", ["", "xlmr_base", "xlmr_large"], "Take the model, its dtype and seq 512 from "
                  "configs/<preset>.py; flags given on the command line override them.")
FLAGS = flags.FLAGS

CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"
# Benchmark flag -> (section, field) of the recipe that --preset takes it from.
PRESET_FIELDS = {"layers": ("model", "num_layers"), "hidden": ("model", "hidden_size"),
                 "heads": ("model", "num_heads"), "ffn": ("model", "mlp_dim"), "vocab": ("model", "vocab_size"),
                 "remat": ("model", "remat"), "dtype": ("model", "dtype"), "seq": ("data", "seq_len")}


def sizes(preset: str, flag_values: dict, given: set) -> dict:
    """The model and sequence settings by flag name (PRESET_FIELDS): `flag_values`, or with a
    preset the recipe's values for the flags not `given` on the command line."""
    chosen = dict(flag_values)
    if preset:
        recipe = sibling_config(str(CONFIGS_DIR / f"{preset}.py"), preset)
        chosen.update({name: recipe[section][field] for name, (section, field) in PRESET_FIELDS.items()
                       if name not in given})
    return chosen


def benchmark_config():
    config = default_config()
    m = config.model
    chosen = sizes(FLAGS.preset, {name: FLAGS[name].value for name in PRESET_FIELDS},
                   {name for name in PRESET_FIELDS if FLAGS[name].present})
    m.num_layers, m.hidden_size, m.num_heads = chosen["layers"], chosen["hidden"], chosen["heads"]
    m.mlp_dim, m.vocab_size, m.dtype, m.remat = chosen["ffn"], chosen["vocab"], chosen["dtype"], chosen["remat"]
    m.max_len = max(512, chosen["seq"])
    m.dropout_rate = m.attention_dropout_rate = FLAGS.dropout
    m.attention = FLAGS.attention
    if FLAGS.attention != "xla":
        m.attention_dropout_rate = 0.0
    config.data.seq_len = chosen["seq"]
    t = config.train
    t.batch_size, t.steps_per_call = FLAGS.batch, FLAGS.steps_per_call
    # Nothing is logged, evaluated or saved here: these need only be multiples of steps_per_call.
    t.num_steps = config.checkpoint.every_steps = 10**6 * t.steps_per_call
    t.log_every = t.steps_per_call
    config.evals = ml_collections.ConfigDict()
    config.mesh.rules = FLAGS.rules
    config.objectives = {name: 1.0 for name in FLAGS.objectives}
    config.xlco.queue_size = FLAGS.queue_size
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


def random_sides(config, rng: np.random.Generator) -> np.ndarray:
    """`<s> x </s>` rows of random lengths (a quarter to all of seq_len), padded."""
    b, s, v = config.train.batch_size, config.data.seq_len, config.model.vocab_size
    rows = np.full((b, s), config.model.pad_token_id, np.int32)
    for row, length in zip(rows, rng.integers(max(s // 4, 3), s + 1, b)):
        row[:length] = np.concatenate([[0], rng.integers(4, v - 1, length - 2), [2]])
    return rows


def random_stream_batch(spec, config, rng: np.random.Generator) -> dict:
    """A random batch of a stream of the kind `spec` names, in the fields it declares."""
    fields = stream_fields(spec, config)
    if spec.kind == "pairs":
        batch = {"src_ids": random_sides(config, rng), "tgt_ids": random_sides(config, rng)}
    else:
        batch = random_batch(config, rng)
        if "position_ids" in fields:   # one long pair: continuous positions, as the model's own
            offset = config.model.position_offset
            batch["position_ids"] = np.broadcast_to(offset + np.arange(config.data.seq_len, dtype=np.int32),
                                                    batch["input_ids"].shape).copy()
    if "pair_weight" in fields:        # real pairs (data.synthetic_pairs): weight 1
        batch["pair_weight"] = np.ones(config.train.batch_size, np.float32)
    for key, field in fields.items():  # languages: two of them, at random
        if key not in batch:
            batch[key] = rng.integers(0, 2, (config.train.batch_size, *field.shape)).astype(field.dtype)
    return batch


def make_ours(config, batch_names=None):
    """(run(num_steps) -> last update's metrics, parameter count, objectives): the training step on
    random batches of the objectives reading `batch_names` (default: all of them), in calls of
    train.steps_per_call updates (num_steps a multiple of it), each on the same batches."""
    trainer = build_trainer(config, make_mesh(config.mesh), logical_axis_rules(config.mesh.rules))
    state = trainer.new_state()
    num_params = count_params(state.params)
    objectives, step = trainer.objectives, trainer.step
    rng = np.random.default_rng(0)
    specs = [spec for spec in trainer.streams if batch_names is None or spec.name in batch_names]
    batches = {spec.name: random_stream_batch(spec, config, rng) for spec in specs}
    per_call = config.train.steps_per_call
    if per_call > 1:
        batches = jax.tree.map(lambda x: np.stack([x] * per_call), batches)
    batches = jax.device_put(batches, step.call_sharding())

    def run(num_steps):
        nonlocal state
        for _ in range(num_steps // per_call):
            state, metrics = step(state, batches)
        metrics = jax.block_until_ready(metrics)
        return metrics if per_call == 1 else jax.tree.map(lambda x: x[-1], metrics)

    return run, num_params, [o for o in objectives if o.batch_name in batches]


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
    per_call = config.train.steps_per_call
    if FLAGS.steps % per_call:
        raise XlmJaxError(f"--steps={FLAGS.steps} is not a multiple of --steps_per_call={per_call}: every "
                          f"timed call runs {per_call} updates")
    if FLAGS.compare and FLAGS.objectives != ["mlm"]:
        raise XlmJaxError("--compare: the peers train masked LM alone; compare with --objectives=mlm")
    for name in FLAGS.compare:
        if name not in peers.PEERS:
            raise XlmJaxError(f"--compare: unknown peer {name!r}; known: {', '.join(peers.PEERS)}")
        peers.check_installed(name)
    ours, num_params, objectives = make_ours(config)
    systems, costs = {"xlm_jax": ours}, {"xlm_jax": step_cost(objectives)}
    mix = [spec.name for spec in streams(objectives)]
    for name in mix if len(mix) > 1 else []:   # each objective's batch alone, beside the mix
        systems[f"xlm_jax {name} alone"], _, alone = make_ours(config, [name])
        costs[f"xlm_jax {name} alone"] = step_cost(alone)
    # The peers see the very batch ours trains on (same ids, same masked positions).
    batch = random_batch(config, np.random.default_rng(0))
    for name in FLAGS.compare:
        systems[name] = peers.make_peer(name, config, batch)
        costs[name] = step_cost([o for o in objectives if o.name == "mlm"])

    compile_s, first = {}, {}
    for name, run in systems.items():  # compile and warm up each once: one call
        start = time.perf_counter()
        first[name] = run(per_call if name.startswith("xlm_jax") else 1)
        compile_s[name] = time.perf_counter() - start
    rounds = {name: [] for name in systems}
    for _ in range(FLAGS.repeats):  # alternate, so load on this machine hits every system alike
        for name, run in systems.items():
            rounds[name].append(timed(run, FLAGS.steps))
    best_round = {name: min(r, key=lambda r: r.wall) for name, r in rounds.items()}
    best = {name: r.wall for name, r in best_round.items()}

    peak, source = metrics_lib.peak_flops()
    padding = vocab_padding_params(config.model)
    m = config.model
    print(f"model: {(num_params - padding) / 1e6:.1f}M params (+{padding:,} of vocabulary padding), "
          + (f"preset={FLAGS.preset} " if FLAGS.preset else "")
          + f"layers={m.num_layers} hidden={m.hidden_size} heads={m.num_heads} ffn={m.mlp_dim} "
          f"vocab={m.vocab_size} seq={config.data.seq_len} batch={FLAGS.batch} dtype={m.dtype} "
          f"remat={m.remat} attention={m.attention} steps_per_call={per_call}")
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; peak "
          f"{peak / 1e12:.3f} TFLOP/s ({source})")
    print(f"objectives: {', '.join(mix)} (schedule sum); model GFLOP per step: "
          + ", ".join(f"{part} {value / 1e9:.2f}" for o in objectives for part, value in o.flops().items()))
    print(f"compile: {compile_s['xlm_jax']:.1f}s  loss after warm-up: "
          f"{float(first['xlm_jax']['loss']):.3f}")
    for name in [n for n in systems if n.startswith("xlm_jax")]:
        tokens, flops = costs[name]
        print(f"{name}: {1 / best[name]:.2f} steps/s  {tokens / best[name]:,.0f} tokens/s  "
              f"MFU {100 * flops / best[name] / peak:.1f}%  step {1000 * best[name]:.1f} ms  "
              + (f"peak memory {metrics_lib.peak_memory_bytes() / 2**30:.2f} GiB"
                 + (" (the process's, all systems included)" if len(systems) > 1 else "") + "  "
                 if name == "xlm_jax" else "")
              + f"CPU {best_round[name].cpu:.2f} s/step ({best_round[name].system:.2f} system)")
    if not FLAGS.compare:
        return
    print(f"timing: best of {FLAGS.repeats} alternating rounds of {FLAGS.steps} steps per system")
    for name in systems:
        tokens = costs[name][0]
        median = statistics.median(r.wall for r in rounds[name])
        print(f"{name}: {tokens / best[name]:,.0f} tokens/s best, {tokens / median:,.0f} median  "
              f"CPU {best_round[name].cpu:.2f} s/step ({best_round[name].system:.2f} system)  "
              f"(compile+first call {compile_s[name]:.1f}s, first loss "
              f"{float(first[name]['loss'] if name.startswith('xlm_jax') else first[name]):.3f})")
    ratios = {name: best[name] / best["xlm_jax"] for name in FLAGS.compare}
    print(" ".join(f"ratio_vs_{name}={ratio:.2f}" for name, ratio in ratios.items()))


def step_cost(objectives) -> tuple[int, float]:
    """(input tokens, model FLOPs) of one step of these objectives."""
    return (sum(o.tokens_per_step() for o in objectives),
            sum(sum(o.flops().values()) for o in objectives))


if __name__ == "__main__":
    cli.run(main)
