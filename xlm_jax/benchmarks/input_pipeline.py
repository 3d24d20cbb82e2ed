"""Examples/s and tokens/s of the input pipeline, per host and per CPU core, against what
the train step of the same config consumes on this machine.

  python -m xlm_jax.benchmarks.input_pipeline --config=configs/demo.py \\
      [--config.data.corpus_dir=DIR] [--workdir=DIR] [--seconds=10] [--streams=blocks,tlm,pairs]

Two paths, each timed on its own:
- on the fly: raw sentences -> tokenizer.encode -> XLM-R stream packing, what data
  preparation does with a corpus that is not prepared yet;
- prepared: packed token blocks (and tokenized translation pairs, for --streams with tlm or
  pairs) -> sampling, masking, batching (tf.data), what every training step pulls; each
  stream with train.batch_size rows a step, all streams every step.
Tokens are positions of the sequences the model trains on (a "pairs" row has two).
"""
import os
import time

from absl import flags
from ml_collections import config_flags

from xlm_jax import cli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the tokenizer is read from or trained into "
                               "(default: a temporary directory).")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "Time spent on each measurement.")
_STEP_STEPS = flags.DEFINE_integer("step_steps", 3, "Train steps timed for the consumption rate "
                                   "(0 = skip the train step).")
_STREAMS = flags.DEFINE_list("streams", ["blocks"], "Stream kinds pulled together each step (blocks = MLM, "
                             "tlm, pairs); the prepared rate is their sum, each also printed alone.")
flags.mark_flags_as_required(["config"])

_NAMES = {"blocks": "mlm", "tlm": "tlm", "pairs": "pairs"}   # the stream name of each kind here


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def on_the_fly(data, text, config, seconds: float) -> tuple[int, int, float]:
    """(sentences, packed tokens, seconds) of encoding and packing the training text, in
    chunks, until `seconds` have passed or the text runs out."""
    from xlm_jax.data.examples import pack_text

    tokenizer, seq_len = data.tokenizer, config.data.seq_len
    chunks = [(lang, lines[begin:begin + 20_000]) for lang in data.languages
              for lines in [text.own_train(lang)] for begin in range(0, len(lines), 20_000)]
    sentences = tokens = 0
    start = time.perf_counter()
    for lang, chunk in chunks:
        blocks = pack_text(tokenizer.for_language(lang).encode(chunk), seq_len, tokenizer, config.data.packing)
        sentences, tokens = sentences + len(chunk), tokens + blocks.size
        if time.perf_counter() - start > seconds:
            break
    return sentences, tokens, time.perf_counter() - start


def stream_specs(kinds: list[str], config):
    """One stream of each kind of --streams, train.batch_size rows each, named as its objective would be."""
    from xlm_jax.data.streams import KINDS, StreamSpec

    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"--streams: got {','.join(kinds)}; use a comma-separated list of {', '.join(KINDS)}")
    return [StreamSpec(_NAMES[kind], kind, config.train.batch_size) for kind in dict.fromkeys(kinds)]


def prepared(data, config, specs, seconds: float) -> tuple[int, dict[str, int], float]:
    """(examples, {stream name: tokens}, seconds) of batches of every stream pulled together from
    the prepared data."""
    from xlm_jax.data.pipeline import train_batches

    batches = train_batches(data, config, start_step=0, streams=specs)
    next(batches)  # builds the tf.data graphs and fills the prefetch buffers
    examples, tokens = 0, dict.fromkeys((spec.name for spec in specs), 0)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for name, batch in next(batches).items():
            sequences = [batch[key] for key in ("input_ids", "src_ids", "tgt_ids") if key in batch]
            examples, tokens[name] = examples + len(sequences[0]), tokens[name] + sum(x.size for x in sequences)
    return examples, tokens, time.perf_counter() - start


def train_step_tokens_per_s(config, steps: int) -> float:
    from xlm_jax.benchmarks.train_step import make_ours, timed

    run = make_ours(config)[0]   # (run, parameter count, ...)
    run(1)  # compile
    return config.train.batch_size * config.data.seq_len / timed(run, steps).wall


def main(argv):
    del argv
    import tempfile

    import tensorflow as tf

    from xlm_jax.train.builder import validate
    from xlm_jax.data.prepare import prepare_data
    from xlm_jax.data.text import read_text

    tf.config.set_visible_devices([], "GPU")
    config = validate(_CONFIG.value)
    specs = stream_specs(_STREAMS.value, config)
    pairs = any(spec.kind != "blocks" for spec in specs)
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="xlm_jax_input_bench_")
    text = read_text(config, log=lambda _: None, pairs=pairs)
    data = prepare_data(config, workdir, log=lambda _: None, text=text, pairs=pairs)
    cores, seq_len = cpu_cores(), config.data.seq_len

    sentences, fly_tokens, fly_s = on_the_fly(data, text, config, _SECONDS.value)
    examples, stream_tokens, prep_s = prepared(data, config, specs, _SECONDS.value)
    fly_rate, prep_rate = fly_tokens / fly_s, sum(stream_tokens.values()) / prep_s
    combined = 1 / (1 / fly_rate + 1 / prep_rate)   # tokenize + pack, then mask + batch
    print(f"corpus: {len(data.languages)} languages, tokenizer {data.tokenizer.vocab_size:,} ids, "
          f"seq_len {seq_len}, batch {config.train.batch_size}; {cores} CPU core(s) on this host")
    print(f"on the fly (encode + pack): {sentences / fly_s:,.0f} sentences/s  "
          f"{fly_rate:,.0f} tokens/s per host  {fly_rate / cores:,.0f} per core")
    print(f"on the fly, then masked and batched: {combined / seq_len:,.0f} examples/s  "
          f"{combined:,.0f} tokens/s per host  {combined / cores:,.0f} per core")
    print(f"prepared (sample + mask + batch): {examples / prep_s:,.0f} examples/s  "
          f"{prep_rate:,.0f} tokens/s per host  {prep_rate / cores:,.0f} per core")
    if len(specs) > 1:
        for spec in specs:
            rate = stream_tokens[spec.name] / prep_s
            print(f"  stream {spec.name} ({spec.kind}, {spec.batch_size} rows a step): {rate:,.0f} tokens/s per host")
    if _STEP_STEPS.value:
        consumed = train_step_tokens_per_s(config, _STEP_STEPS.value)
        print(f"train step of this config here: {consumed:,.0f} tokens/s")
        print(f"ratio_prepared_vs_step={prep_rate / consumed:.1f} "
              f"ratio_on_the_fly_vs_step={combined / consumed:.1f}")


if __name__ == "__main__":
    cli.run(main)
