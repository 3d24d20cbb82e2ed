"""The fine-tuning engine: the heads, the loss, the batch order, resuming, and 1 vs 8 devices.

Engine runs use a tiny byte-level random-init subject (tests/evaluation/conftest.py) on
real UD English sentences; the numbers are checked against numpy re-implementations and
hand-computed cases, and the runs against each other (a killed and resumed fine-tune
against an uninterrupted one; 8 devices against 1).
"""
import dataclasses
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from tests.evaluation.conftest import random_subject
from tests.helpers import to_numpy
from xlm_jax.errors import CheckpointError, ConfigError
from xlm_jax.evaluation import finetune, tagging
from xlm_jax.evaluation.encoding import make_context
from xlm_jax.evaluation.registry import evaluator_options
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.models.task_heads import SequenceClassifier, TokenClassifier
from xlm_jax.train.checkpoints import Checkpoints

IGNORE = finetune.IGNORE


def with_dropout(subject, rate=0.1):
    """The subject with dropout on, so that the dropout keys' dependence on the step is exercised."""
    config = subject.model_config.copy_and_resolve_references()
    config.dropout_rate = config.attention_dropout_rate = rate
    return dataclasses.replace(subject, model_config=config)


@pytest.fixture(scope="module")
def subjects():
    """devices -> the same tiny byte-level random-init subject (seed 5, dropout 0.1) on 1 and 8 devices."""
    return {devices: with_dropout(random_subject(devices=devices, seed=5)) for devices in (1, 8)}


@pytest.fixture(scope="module")
def pos_data(shared_data):
    """(sentences, labels): 40 real English-EWT sentences."""
    sentences = tagging.read_tagged(shared_data / "pos" / "en_ewt-ud-dev.tsv")[:40]
    return sentences, sorted({t for s in sentences for t in s.tags})


def token_examples(subject, pos_data, max_len=48):
    sentences, labels = pos_data
    return tagging.TokenClassification.examples(subject.tokenizer, sentences, labels, max_len)


def small_budget(checkpoint_every=2):
    """6 updates of 6 examples: one compiled program for every engine test on a mesh."""
    return finetune.Budget(steps=6, batch_size=6, learning_rate=3e-3, warmup_fraction=0.2,
                           weight_decay=0.01, checkpoint_every=checkpoint_every)


# --- the heads ----------------------------------------------------------------------------
def _boxed(module, ids):
    return jax.eval_shape(lambda: module.init(jax.random.key(0), ids))["params"]


def test_heads_hold_the_masked_lm_encoder_layout_plus_a_logically_partitioned_head(subjects):
    config = subjects[1].model_config
    ids = np.full((1, 8), 4, np.int32)
    masked_lm = nn.meta.unbox(_boxed(MaskedLM(config), ids))
    for module in (SequenceClassifier(config, 3), TokenClassifier(config, 5)):
        boxed = _boxed(module, ids)
        assert set(boxed) == {"encoder", "head"}
        shapes = jax.tree.map(lambda x: x.shape, nn.meta.unbox(boxed)["encoder"])
        assert shapes == jax.tree.map(lambda x: x.shape, masked_lm["encoder"])
        leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        assert leaves and all(isinstance(leaf, nn.Partitioned) for leaf in leaves)
    head = nn.meta.unbox(_boxed(SequenceClassifier(config, 3), ids))["head"]
    assert jax.tree.map(lambda x: x.shape, head) == {"dense": {"kernel": (32, 32), "bias": (32,)},
                                                     "out_proj": {"kernel": (32, 3), "bias": (3,)}}
    head = nn.meta.unbox(_boxed(TokenClassifier(config, 5), ids))["head"]
    assert jax.tree.map(lambda x: x.shape, head) == {"out_proj": {"kernel": (32, 5), "bias": (5,)}}


def _random_params(module, ids, seed):
    """Params of the module's shapes drawn at random (fresh biases are 0 and would hide a bug)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        x = rng.normal(0.0, 0.3, leaf.shape).astype(np.float32)
        return x + 1.0 if path[-1].key == "scale" else x

    return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(_boxed(module, ids)))


def test_heads_compute_what_transformers_heads_compute(subjects):
    """SequenceClassifier: out_proj(tanh(dense(h[<s>]))); TokenClassifier: out_proj(h) per token."""
    config = subjects[1].model_config
    ids = np.array([[0, 40, 41, 42, 2, 1], [0, 50, 51, 2, 1, 1]], np.int32)
    for module in (SequenceClassifier(config, 3), TokenClassifier(config, 4)):
        params = _random_params(module, ids, seed=1)
        both = jax.jit(lambda p, x, m=module: m.apply({"params": p}, x, method=lambda m, x: (m.encoder(x)[0], m(x))))
        hidden, logits = map(np.asarray, both(params, ids))
        head = params["head"]
        if isinstance(module, SequenceClassifier):
            pooled = np.tanh(hidden[:, 0] @ head["dense"]["kernel"] + head["dense"]["bias"])
            expected = pooled @ head["out_proj"]["kernel"] + head["out_proj"]["bias"]
        else:
            expected = hidden @ head["out_proj"]["kernel"] + head["out_proj"]["bias"]
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


# --- loss, batches ------------------------------------------------------------------------
def test_loss_terms_against_hand_computed_cross_entropy():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 0.0, 0.0]], np.float32)
    terms = finetune.label_loss_terms(logits, np.array([0, 2, IGNORE]))
    # -log softmax: row 0 label 0: log(e^2 + 2) - 2; row 1 label 2: log(e + 2); row 2 ignored.
    expected = (np.log(np.e ** 2 + 2) - 2) + np.log(np.e + 2)
    np.testing.assert_allclose(float(terms["loss_sum"]), expected, rtol=1e-6)
    assert float(terms["correct"]) == 1.0 and float(terms["count"]) == 2.0

    tokens = np.stack([logits, logits[::-1]])                 # [2, 3, 3]: per-token labels
    labels = np.array([[0, IGNORE, 0], [IGNORE, 1, IGNORE]])
    terms = finetune.label_loss_terms(tokens, labels)
    expected = (np.log(np.e ** 2 + 2) - 2) + (np.log(np.e ** 5 + 2) - 5) + (np.log(np.e + 2) - 1)
    np.testing.assert_allclose(float(terms["loss_sum"]), expected, rtol=1e-6)
    assert float(terms["correct"]) == 3.0 and float(terms["count"]) == 3.0
    terms = finetune.label_loss_terms(tokens, np.array([[1, IGNORE, IGNORE], [IGNORE, IGNORE, IGNORE]]))
    np.testing.assert_allclose(float(terms["loss_sum"]), np.log(np.e ** 2 + 2), rtol=1e-6)
    assert float(terms["correct"]) == 0.0 and float(terms["count"]) == 1.0


def test_batch_order_is_epoch_permutations_drawn_from_the_seed():
    n, b = 10, 4
    stream = np.concatenate([finetune.batch_indices(7, step, b, n) for step in range(10)])   # 4 epochs
    for epoch in range(4):
        np.testing.assert_array_equal(np.sort(stream[epoch * n:(epoch + 1) * n]), np.arange(n))
    assert not np.array_equal(stream[:n], stream[n:2 * n])                  # a new order each epoch
    np.testing.assert_array_equal(finetune.batch_indices(7, 6, b, n), stream[24:28])   # any step alone
    assert not np.array_equal(finetune.batch_indices(8, 0, b, n), stream[:b])          # the seed matters


def test_padded_batch_pads_rows_and_tokens_with_ignore():
    examples = finetune.Examples(ids=[np.array([0, 9, 2]), np.array([0, 8, 7, 2])],
                                 labels=[np.array([IGNORE, 3, IGNORE]), np.array([IGNORE, 1, 2, IGNORE])])
    batch = finetune.padded_batch(examples, [1, 0], rows=3, length=5, pad_id=1)
    np.testing.assert_array_equal(batch["input_ids"], [[0, 8, 7, 2, 1], [0, 9, 2, 1, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(batch["labels"][:2], [[IGNORE, 1, 2, IGNORE, IGNORE],
                                                        [IGNORE, 3, IGNORE, IGNORE, IGNORE]])
    assert (batch["labels"][2] == IGNORE).all()
    sequences = finetune.Examples(ids=examples.ids, labels=[2, 0])
    np.testing.assert_array_equal(finetune.padded_batch(sequences, [0, 1], 4, 5, 1)["labels"], [2, 0, IGNORE, IGNORE])


def test_budget_counts_epochs_and_options_are_checked():
    options = evaluator_options("pos", train="x", test="en:y", epochs=2.5, batch_size=32)
    assert finetune.budget(options, 100).steps == 8                          # ceil(2.5 * 100 / 32)
    assert finetune.budget(evaluator_options("pos", steps=5), 100).steps == 5
    schedule = finetune.optimizer_config(finetune.budget(options, 100))
    assert (schedule.num_steps, schedule.warmup_steps) == (8, 0)
    for option, value in (("learning_rate", 0.0), ("warmup_fraction", 1.0), ("batch_size", 0)):
        evaluator = tagging.PartOfSpeech("pos", evaluator_options("pos", train="x", test="en:y", **{option: value}))
        with pytest.raises(ConfigError, match=f"evals.pos.{option}"):
            evaluator.check()


# --- the engine ---------------------------------------------------------------------------
class Killed(Exception):
    pass


def kill_at(step: int, total: int):
    def log(message):
        if f"step {step}/{total}," in message:
            raise Killed(message)
    return log


def test_killed_fine_tune_resumes_to_the_same_params(subjects, pos_data, tmp_path, monkeypatch):
    subject = subjects[1]
    examples = token_examples(subject, pos_data)
    module = TokenClassifier(subject.model_config, len(pos_data[1]))
    encoder_before = to_numpy(subject.params["encoder"])

    def fine_tune(log, work_dir=None, who=subject):
        return finetune.FineTune(make_context(who, log=log, work_dir=work_dir), module, small_budget(), "pos")

    monkeypatch.chdir(tmp_path)                      # no work_dir: nothing may land on disk
    straight = fine_tune(lambda _: None)
    expected = to_numpy(straight.train(examples).params)
    assert os.listdir(tmp_path) == []
    losses = [h["loss"] for h in straight.history]
    assert len(losses) == 6 and losses[-1] < losses[0]

    work_dir = str(tmp_path / "ft")
    with pytest.raises(Killed):
        fine_tune(kill_at(5, 6), work_dir).train(examples)
    assert Checkpoints(work_dir, keep=1, read_only=True).steps() == [4]

    lines = []
    resumed = fine_tune(lines.append, work_dir)
    actual = to_numpy(resumed.train(examples).params)
    assert "pos: resuming the fine-tune at step 4/6" in lines
    jax.tree.map(np.testing.assert_array_equal, actual, expected)
    assert resumed.history == straight.history                               # same batches, same losses
    assert Checkpoints(work_dir, keep=1, read_only=True).steps() == [6]

    lines.clear()
    jax.tree.map(np.testing.assert_array_equal, to_numpy(fine_tune(lines.append, work_dir).train(examples).params),
                 expected)
    assert not [line for line in lines if "fine-tuning step" in line]        # finished: nothing trained
    jax.tree.map(np.testing.assert_array_equal, to_numpy(subject.params["encoder"]), encoder_before)

    with pytest.raises(CheckpointError, match="holds a fine-tune of other data, options or model"):
        fine_tune(lambda _: None, work_dir, who=dataclasses.replace(subject, seed=4)).train(examples)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_eight_devices_fine_tune_to_the_same_predictions_as_one(subjects, pos_data, level):
    """Batch 6 on 8 devices pads two label-free rows; the predictions must not notice."""
    logits = []
    for devices in (1, 8):
        subject = subjects[devices]
        examples = token_examples(subject, pos_data)
        if level == "sequence":   # a sentence-level label: the first word's tag
            examples = finetune.Examples(examples.ids, [int(labels[1]) for labels in examples.labels])
            module = SequenceClassifier(subject.model_config, len(pos_data[1]))
        else:
            module = TokenClassifier(subject.model_config, len(pos_data[1]))
        tuner = finetune.FineTune(make_context(subject, log=lambda _: None), module, small_budget(), "pos")
        params = tuner.train(examples).params
        logits.append(tuner.predict(params, examples.ids[:10]))
    for one, eight in zip(*logits):
        np.testing.assert_allclose(eight, one, rtol=1e-4, atol=1e-4)
    labels = len(pos_data[1])
    assert logits[0][0].shape == ((len(examples.ids[0]), labels) if level == "token" else (labels,))
