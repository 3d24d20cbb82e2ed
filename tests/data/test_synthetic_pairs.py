"""Synthetic (back-translated) pairs as a source of their own: the mix the pair streams draw, the
`pair_weight` that tags each example, resume and process counts, the weighted TLM and XLCo
losses against numpy, and the config's errors.

The corpus: monolingual en, sw, zu; real en-sw pairs (TICO-19 rows 0-79); as the synthetic
source (a stand-in for back-translations: other rows, so each example's text tells its source)
en-sw rows 1000-1239 and en-zu rows 500-549 (TICO-19 is multi-way parallel, so not rows 0-79 of
it either), a language pair with synthetic pairs only. UTF-8 byte tokens (no tokenizer to
train), so preparing is quick.
"""
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import np_forward, np_mean_cross_entropy, random_params, tiny_config, write_corpus
from xlm_jax.benchmarks.train_step import random_stream_batch
from xlm_jax.config import default_config
from xlm_jax.modes.prepare import validate
from xlm_jax.data.pipeline import train_batches
from xlm_jax.data.prepare import prepare_data
from xlm_jax.data.sampling import temperature_probs
from xlm_jax.data.streams import StreamSpec, stream_fields
from xlm_jax.data.text import read_text
from xlm_jax.errors import ConfigError, DataError
from xlm_jax.objectives.base import StepContext
from xlm_jax.objectives.registry import build_objectives
from xlm_jax.objectives.xlco import infonce_terms

from processes import run_processes

SHARDS, SEQ_LEN, BATCH, WEIGHT = 4, 48, 16, 0.5
REAL = {("en", "sw"): (0, 80)}
SYNTHETIC = {("en", "sw"): (1000, 240), ("en", "zu"): (500, 50)}
PAIRS = StreamSpec("xlco", "pairs", BATCH)
LANGUAGES = ["en", "sw", "zu"]


def _rows(shared_data, pair, first, count):
    lines = (shared_data / "parallel" / "tico19" / f"{pair[0]}-{pair[1]}.tsv").read_text(encoding="utf-8")
    return lines.splitlines()[first:first + count]


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, shared_data, LANGUAGES, 120)
    for pair, (first, count) in REAL.items():
        (root / f"{pair[0]}-{pair[1]}.tsv").write_text("\n".join(_rows(shared_data, pair, first, count)) + "\n")
    synthetic = tmp_path_factory.mktemp("back_translated")
    for pair, (first, count) in SYNTHETIC.items():
        (synthetic / f"bt.{pair[0]}-{pair[1]}.tsv").write_text(
            "\n".join(_rows(shared_data, pair, first, count)) + "\n", encoding="utf-8")
    return root, synthetic


def _config(corpus, ratio=0.3, weight=WEIGHT, synthetic=True, **data):
    root, bt = corpus
    c = default_config()
    c.data.corpus_dir, c.data.seq_len, c.data.shards, c.data.alpha = str(root), SEQ_LEN, SHARDS, 0.5
    c.data.tokenizer, c.model.vocab_size, c.data.eval_sentences_per_language = "bytes", 261, 20
    if synthetic:
        c.data.synthetic_pairs = f"en-sw:{bt}/bt.en-sw.tsv;en-zu:{bt}/bt.en-zu.tsv"
        c.data.synthetic_ratio, c.data.synthetic_weight = ratio, weight
    c.data.update(data)
    c.train.batch_size, c.train.seed = BATCH, 5
    c.objectives.xlco, c.xlco.queue_size = 1.0, 2 * BATCH
    return validate(c)


@pytest.fixture(scope="module")
def text(corpus):
    return read_text(_config(corpus), log=lambda _: None, pairs=True)


def _prepared(corpus, text, tmp_path_factory, **options):
    logs = []
    data = prepare_data(_config(corpus, **options), str(tmp_path_factory.mktemp("run")), log=logs.append,
                        text=text, pairs=True)
    return data, "\n".join(logs)


@pytest.fixture(scope="module")
def prepared(corpus, text, tmp_path_factory):
    return _prepared(corpus, text, tmp_path_factory)


@pytest.fixture(scope="module")
def examples(prepared, corpus):
    """The first 30 steps' pair examples (480) of the run at ratio 0.3, weight 0.5, as numpy arrays."""
    data, _ = prepared
    steps = train_batches(data, _config(corpus), start_step=0, streams=[PAIRS])
    batches = [next(steps)["xlco"] for _ in range(30)]
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def _sides(data, rows):
    """The `<s> x </s>` layouts of every side of `rows`, as bytes: what a pair example's side is."""
    tok, out = data.tokenizer, set()
    for row in rows:
        for ids in tok.encode(row.split("\t")):
            body = np.asarray(ids[:SEQ_LEN - 2], np.int32)
            side = np.full(SEQ_LEN, tok.pad_id, np.int32)
            side[0], side[1:len(body) + 1], side[len(body) + 1] = tok.bos_id, body, tok.eos_id
            out.add(side.tobytes())
    return out


def _pair_of(examples, row):
    languages = {LANGUAGES[examples["src_language"][row]], LANGUAGES[examples["tgt_language"][row]]}
    return ("en", (languages - {"en"}).pop())


# --- reading and preparing -----------------------------------------------------------------------------


def test_synthetic_pairs_are_read_apart_and_counted(prepared, text, corpus):
    data, log = prepared
    assert data.pairs == [("en", "sw"), ("en", "zu")]
    assert data.pair_counts == {("en", "sw"): 80}                       # the real pairs
    assert data.synthetic_counts == {pair: n for pair, (_, n) in SYNTHETIC.items()}
    assert data.replicated_synthetic_pairs == []                        # 60 and 12 or more in every shard
    q = temperature_probs({"en-sw": 80 + 240, "en-zu": 50}, 0.5)        # q_i over real + synthetic
    assert data.pair_probs == pytest.approx([q["en-sw"], q["en-zu"]])
    assert data.synthetic_fractions == [0.3, 1.0]
    effective = q["en-sw"] * 0.3 + q["en-zu"]
    assert re.search(r"synthetic pairs read: 290, real pairs: 80; effective ratio "
                     rf"{effective:.4f} .*weighted 0\.5", log)
    assert re.search(r"en-zu +0 +50 ", log)
    # Synthetic pairs feed no MLM text: the languages' sentences are those of the run without them.
    without = read_text(_config(corpus, synthetic=False), log=lambda _: None, pairs=True)
    assert without.synthetic is None and without.languages == text.languages == LANGUAGES
    np.testing.assert_array_equal(text.sentences, without.sentences)
    shards = [table for table in data.synthetic_train_pairs[0]]
    assert sum(len(table) for table in shards) == 240 and all(len(table) >= 10 for table in shards)
    assert [len(table) for table in data.train_pairs[1]] == [0] * SHARDS   # en-zu has no real pairs


def test_without_the_ratio_synthetic_pairs_mix_by_their_size(corpus, text, tmp_path_factory):
    data, log = _prepared(corpus, text, tmp_path_factory, ratio=0.0)
    assert data.synthetic_fractions == [240 / 320, 1.0]
    assert "data.synthetic_ratio=0, 0 = by size" in log


# --- the mix the streams draw ---------------------------------------------------------------------------


def test_the_realized_share_of_synthetic_examples_is_the_ratio(prepared, examples):
    """Each language pair's synthetic share is its P(synthetic) within 4 standard errors, and each
    example's pair_weight tells its source: its sides are rows of that source's file."""
    data, _ = prepared
    synthetic = examples["pair_weight"] == WEIGHT
    assert set(np.unique(examples["pair_weight"]).tolist()) == {WEIGHT, 1.0}
    pairs = np.array([data.pairs.index(_pair_of(examples, row)) for row in range(len(synthetic))])
    en_sw = pairs == 0
    n, share = int(en_sw.sum()), float(synthetic[en_sw].mean())
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n), (share, n)
    assert synthetic[~en_sw].all()                                      # en-zu: synthetic pairs only
    overall = float(np.dot(data.pair_probs, data.synthetic_fractions))
    assert abs(synthetic.mean() - overall) < 4 * math.sqrt(overall * (1 - overall) / len(synthetic))
    print(f"realized: en-sw {share:.3f} of {n} (ratio 0.3); all {synthetic.mean():.3f} of {len(synthetic)} "
          f"(expected {overall:.3f})")


def test_pair_weight_tells_the_source_of_every_example(prepared, examples, shared_data):
    data, _ = prepared
    real = _sides(data, _rows(shared_data, ("en", "sw"), *REAL[("en", "sw")]))
    fake = set().union(*(_sides(data, _rows(shared_data, pair, *rows)) for pair, rows in SYNTHETIC.items()))
    assert not real & fake
    for row, weight in enumerate(examples["pair_weight"]):
        sides = {examples["src_ids"][row].tobytes(), examples["tgt_ids"][row].tobytes()}
        assert sides <= (fake if weight == WEIGHT else real), f"example {row} (weight {weight}) is not of its source"


def test_the_ratio_draw_keeps_the_rows_drawn_without_synthetic_pairs():
    """The pipeline splits each example's key 4 ways (pair, row, direction, source): the first three
    are exactly the 3-way split drawn before synthetic pairs existed, so those runs' rows stand."""
    for key in ([5, 0], [11, 7], [-3, 12]):
        key = tf.constant(key, tf.int64)
        np.testing.assert_array_equal(tf.random.experimental.stateless_split(key, 4)[:3].numpy(),
                                      tf.random.experimental.stateless_split(key, 3).numpy())


def test_the_mix_is_deterministic_and_resumes_exactly(prepared, corpus, examples):
    data, _ = prepared
    config = _config(corpus)
    resumed = train_batches(data, config, start_step=20, streams=[PAIRS, StreamSpec("tlm", "tlm", BATCH)])
    for step in range(20, 23):
        batch = next(resumed)
        rows = slice(step * BATCH, (step + 1) * BATCH)
        for key, value in batch["xlco"].items():
            np.testing.assert_array_equal(value, examples[key][rows], err_msg=f"step {step} {key}")
        assert batch["tlm"]["pair_weight"].dtype == np.float32 and set(batch["tlm"]["pair_weight"]) <= {WEIGHT, 1.0}
    other_seed = config.copy_and_resolve_references()
    other_seed.train.seed = 6
    again = next(train_batches(data, other_seed, start_step=0, streams=[PAIRS]))["xlco"]
    assert not np.array_equal(again["pair_weight"], examples["pair_weight"][:BATCH]) or \
        not np.array_equal(again["src_ids"], examples["src_ids"][:BATCH])


def test_global_batches_do_not_depend_on_the_process_count(prepared, corpus, examples, tmp_path):
    config = _config(corpus)
    parts = run_processes(2, lambda p: prepare_data(config, str(tmp_path), lambda _: None, processes=p, pairs=True))
    one, _ = prepared
    for part in parts:
        assert (part.synthetic_counts, part.synthetic_fractions) == (one.synthetic_counts, one.synthetic_fractions)
    steps = [next(train_batches(part, config, start_step=2, streams=[PAIRS]))["xlco"] for part in parts]
    for key in examples:
        np.testing.assert_array_equal(np.concatenate([s[key] for s in steps]), examples[key][2 * BATCH:3 * BATCH],
                                      err_msg=key)


def test_pair_weight_is_declared_only_with_synthetic_pairs(corpus):
    with_synthetic, without = _config(corpus), _config(corpus, synthetic=False)
    for spec in (PAIRS, StreamSpec("tlm", "tlm", BATCH)):
        assert stream_fields(spec, with_synthetic)["pair_weight"].dtype == np.float32
        assert stream_fields(spec, with_synthetic)["pair_weight"].shape == ()
        assert "pair_weight" not in stream_fields(spec, without)
    assert "pair_weight" not in stream_fields(StreamSpec("mlm", "blocks", BATCH), with_synthetic)


# --- the weighted losses ---------------------------------------------------------------------------------


def _tlm_setup():
    config = tiny_config(batch_size=8)
    config.objectives.tlm = 1.0
    config.data.synthetic_pairs = "en-sw:/any/bt.tsv"    # checked for existence only when read
    config = validate(config)
    (tlm,) = [o for o in build_objectives(config) if o.name == "tlm"]
    model, params = random_params(config, seed=3)
    batch = random_stream_batch(tlm.stream(), config, np.random.default_rng(4))

    @jax.jit
    def terms(params, batch):
        ctx = StepContext(model, params, jnp.asarray(0), 1, {"tlm": None}, deterministic=True)
        return tlm.loss_terms(ctx, batch, None)[0], tlm.normalizer(batch)

    return config, params, batch, terms


def test_tlm_with_weight_one_is_todays_loss_and_half_weights_give_the_weighted_mean():
    config, params, batch, terms = _tlm_setup()
    unweighted = {key: value for key, value in batch.items() if key != "pair_weight"}
    today, today_norm = jax.device_get(terms(params, unweighted))
    ones, ones_norm = jax.device_get(terms(params, dict(batch, pair_weight=np.ones(8, np.float32))))
    assert today_norm == ones_norm and all(today[key] == ones[key] for key in today)   # bit for bit
    synthetic = np.array([0, 1, 1, 0, 0, 1, 0, 1], bool)
    weights = np.where(synthetic, 0.5, 1.0).astype(np.float32)
    got, norm = jax.device_get(terms(params, dict(batch, pair_weight=weights)))
    logits, _ = np_forward(params, batch["input_ids"], config.model)
    slots = np.take_along_axis(logits, batch["masked_positions"][..., None], axis=1)
    slot_weights = batch["masked_weights"] * weights[:, None]
    expected = np_mean_cross_entropy(slots, batch["masked_ids"], slot_weights)
    assert norm == pytest.approx(slot_weights.sum(), rel=1e-6)
    assert got["loss_sum"] / norm == pytest.approx(expected, rel=1e-5)
    assert got["count"] == batch["masked_weights"].sum()             # masked_tokens stays a count
    hits = (slots.argmax(-1) == batch["masked_ids"]) * slot_weights
    assert got["correct"] == pytest.approx(hits.sum(), rel=1e-6)
    # Microbatches (the step's rows k, k + 2, ...) add up to the batch: the weights ride in the sums.
    weighted = dict(batch, pair_weight=weights)
    halves = [jax.device_get(terms(params, {key: value[k::2] for key, value in weighted.items()}))[0] for k in (0, 1)]
    assert halves[0]["loss_sum"] + halves[1]["loss_sum"] == pytest.approx(got["loss_sum"], rel=1e-5)


def test_xlco_weights_each_query_by_its_pairs_weight():
    rng = np.random.default_rng(9)
    queries, queue = rng.normal(size=(6, 8)), rng.normal(size=(10, 8))
    positives = 0.7 * queries + rng.normal(size=(6, 8))
    pair_weight = np.array([1.0, 0.5, 0.5], np.float32)                  # 3 pairs: x_1..x_3, y_1..y_3
    weights = np.concatenate([pair_weight] * 2)
    args = [jnp.asarray(a, jnp.float32) for a in (queries, positives, queue)]
    terms = jax.device_get(infonce_terms(*args, jnp.asarray(10), 0.3, weights=jnp.asarray(weights)))
    logits = np.concatenate([(queries * positives).sum(-1, keepdims=True), queries @ queue.T], axis=1) / 0.3
    per_query = np.log(np.exp(logits).sum(1)) - logits[:, 0]
    assert terms["loss_sum"] / terms["count"] == pytest.approx((per_query * weights).sum() / weights.sum(), rel=1e-5)
    ones = jax.device_get(infonce_terms(*args, jnp.asarray(10), 0.3, weights=jnp.ones(6)))
    plain = jax.device_get(infonce_terms(*args, jnp.asarray(10), 0.3))
    assert all(ones[key] == plain[key] for key in plain)
    config = tiny_config()
    config.objectives.xlco, config.xlco.queue_size = 1.0, 16
    (xlco,) = [o for o in build_objectives(validate(config)) if o.name == "xlco"]
    assert float(xlco.normalizer({"src_ids": np.zeros((3, 4)), "pair_weight": pair_weight})) == 4.0


def test_pair_classification_weighs_a_kept_pair_by_its_weight_and_one_cut_from_two_rows_by_both():
    config = tiny_config(batch_size=8)
    config.objectives.pair_classification = 1.0
    config.data.synthetic_pairs = "en-sw:/any/bt.tsv"
    config = validate(config)
    (classify,) = [o for o in build_objectives(config) if o.name == "pair_classification"]
    model, params = random_params(config, seed=3)
    params = dict(params, objectives={"pair_classification": nn.unbox(classify.init_head(jax.random.key(1)))})
    batch = random_stream_batch(classify.stream(), config, np.random.default_rng(4))

    @jax.jit
    def terms(params, batch):
        joined = classify.prepare_batch(batch, jax.random.key(5))
        ctx = StepContext(model, params, jnp.asarray(0), 1, {classify.batch_name: None}, deterministic=True)
        return joined, classify.loss_terms(ctx, joined, None)[0], classify.normalizer(joined)

    unweighted = {key: value for key, value in batch.items() if key != "pair_weight"}
    _, today, today_norm = jax.device_get(terms(params, unweighted))
    _, ones, ones_norm = jax.device_get(terms(params, dict(batch, pair_weight=np.ones(8, np.float32))))
    assert today_norm == ones_norm == 8 and all(today[key] == ones[key] for key in today)   # bit for bit
    weights = np.array([1, 0.5, 0.5, 1, 1, 0.5, 1, 0.5], np.float32)
    batch["tgt_language"] = np.arange(8, dtype=np.int32)       # y's language names the row it came from
    joined, got, norm = jax.device_get(terms(params, dict(batch, pair_weight=weights)))
    taken = joined["tgt_language"]
    assert 0 < np.sum(taken != np.arange(8)) < 8               # both kinds in this draw
    np.testing.assert_array_equal(joined["pair_weight"], weights * np.where(taken != np.arange(8), weights[taken], 1))
    hidden = np_forward(params, joined["input_ids"], config.model)[1][-1][:, 0]
    head = jax.tree.map(np.asarray, params["objectives"]["pair_classification"])
    logits = np.tanh(hidden @ head["dense"]["kernel"] + head["dense"]["bias"]) @ head["out"]["kernel"] + head["out"]["bias"]
    per_row = np.log(np.exp(logits).sum(-1)) - logits[np.arange(8), joined["label"]]
    assert norm == pytest.approx(joined["pair_weight"].sum(), rel=1e-6)
    assert got["loss_sum"] == pytest.approx((per_row * joined["pair_weight"]).sum(), rel=1e-5)
    hits = logits.argmax(-1) == joined["label"]
    assert got["correct"] == pytest.approx((hits * joined["pair_weight"]).sum(), rel=1e-6)


# --- config errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, message", [
    ({"synthetic_ratio": 1.0}, r"`data.synthetic_ratio`: got 1.0; .* in \[0, 1\)"),
    ({"synthetic_ratio": -0.1}, r"`data.synthetic_ratio`: got -0.1"),
    ({"synthetic_weight": 0.0}, r"`data.synthetic_weight`: got 0.0; .* in \(0, 1\] \(1 = like a real pair\)"),
    ({"synthetic_weight": 1.5}, r"`data.synthetic_weight`: got 1.5"),
    ({"synthetic_pairs": "sw:/bt/sw.txt"}, r"`data.synthetic_pairs`: 'sw' is a language, not a <src>-<tgt> pair"),
    ({"synthetic_pairs": "en-en:/bt/x.tsv"}, r"`data.synthetic_pairs`: 'en-en' is neither"),
    ({"synthetic_pairs": "en-sw"}, r"`data.synthetic_pairs`: entry 'en-sw' has no ':'"),
])
def test_bad_synthetic_fields_name_the_field_and_the_fix(fields, message):
    config = tiny_config()
    config.objectives.tlm = 1.0
    config.data.synthetic_pairs = "en-sw:/bt/en-sw.tsv"
    config.data.update(fields)
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_synthetic_fields_need_a_source_and_a_pair_objective():
    config = tiny_config()
    for field, value in (("synthetic_ratio", 0.3), ("synthetic_weight", 0.5)):
        bad = config.copy_and_resolve_references()
        bad.data[field] = value
        with pytest.raises(ConfigError, match=rf"`data.{field}`: got {value}, but there is no synthetic source: "
                                              r"set data.synthetic_pairs"):
            validate(bad)
    config.data.synthetic_pairs = "en-sw:/bt/en-sw.tsv"    # MLM alone reads no pairs
    with pytest.raises(ConfigError, match=r"`data.synthetic_pairs`: .*no active objective reads pairs; .*"
                                          r"objectives.tlm=1"):
        validate(config)


def test_synthetic_files_are_read_with_the_corpus_policies(corpus, shared_data, tmp_path):
    with pytest.raises(DataError, match=r"data.synthetic_pairs: en-sw: '/nowhere/bt.tsv' does not exist"):
        read_text(_config(corpus, synthetic_pairs="en-sw:/nowhere/bt.tsv"), log=lambda _: None, pairs=True)
    yo = tmp_path / "bt.en-yo.tsv"
    yo.write_text("Hello\tPẹlẹ o\n" * 20, encoding="utf-8")
    with pytest.raises(DataError, match=r"data.synthetic_pairs: en-yo: yo is not a language of this run "
                                        r"\(en, sw, zu\).*give yo text"):
        read_text(_config(corpus, synthetic_pairs=f"en-yo:{yo}"), log=lambda _: None, pairs=True)
    bad = tmp_path / "bt.en-sw.tsv"
    rows = _rows(shared_data, ("en", "sw"), 1000, 60)
    bad.write_text("\n".join(rows[:30] + ["a line without a tab"] + rows[30:]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{bad}, line 31( at byte \d+)?: found 1 tab-separated column"):
        read_text(_config(corpus, synthetic_pairs=f"en-sw:{bad}"), log=lambda _: None, pairs=True)
    skipped = read_text(_config(corpus, synthetic_pairs=f"en-sw:{bad}", on_bad_line="skip"), log=lambda _: None,
                        pairs=True)
    assert skipped.synthetic.counts() == {("en", "sw"): 60}

