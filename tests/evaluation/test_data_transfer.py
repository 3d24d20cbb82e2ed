"""Data Transfer: D_E off synthetic curves with known answers (and out of range), the MLM batches,
tiny end-to-end runs on real Swahili text, and every user-facing error."""
import math

import jax
import numpy as np
import pytest

from tests.evaluation.conftest import random_subject
from xlm_jax.data.tokenizers import ByteTokenizer
from xlm_jax.errors import ConfigError, DataError
from xlm_jax.evaluation.data_transfer import (
    DataTransfer,
    data_transfer,
    first_bytes,
    mask_blocks,
)
from xlm_jax.evaluation.encoding import make_context
from xlm_jax.evaluation.registry import evaluator_options
from xlm_jax.evaluation.subjects import params_shardings

SIZES = [1_000, 10_000, 100_000]
LOSSES = [5.0, 4.0, 3.0]          # loss = 8 - log10(bytes): D_E = 10 ** (8 - loss) inside the curve
TINY_RUN = {"sizes": "2000,16000", "steps": 12, "batch_size": 8, "seq_len": 64, "heldout_lines": 40,
            "warmup_steps": 3, "learning_rate": 2e-3}


def evaluator(**options) -> DataTransfer:
    ev = DataTransfer("dt", evaluator_options("data_transfer", **options))
    ev.check()
    return ev


def test_effective_bytes_on_a_known_curve():
    inside = data_transfer(SIZES, LOSSES, 1_000, 3.5)
    assert inside.effective_bytes == pytest.approx(10 ** 4.5)
    assert inside.transfer_bytes == pytest.approx(10 ** 4.5 - 1_000)
    assert inside.fraction == pytest.approx(1 - 1_000 / 10 ** 4.5)
    assert inside.bound == 0
    on_a_point = data_transfer(SIZES, LOSSES, 10_000, 4.0)
    assert on_a_point.effective_bytes == pytest.approx(10_000) and on_a_point.bound == 0
    # piecewise linear in log(bytes), not in bytes: halfway in loss is the geometric mean of the sizes
    assert data_transfer([100, 400], [2.0, 1.0], 50, 1.5).effective_bytes == pytest.approx(200)


def test_outside_the_curve_is_clamped_and_flagged():
    below = data_transfer(SIZES, LOSSES, 1_000, 2.5)       # better than from scratch on every size
    assert (below.effective_bytes, below.transfer_bytes, below.bound) == (100_000, 99_000, 1)
    above = data_transfer(SIZES, LOSSES, 10_000, 5.5)      # worse than from scratch on the least data
    assert (above.effective_bytes, above.transfer_bytes, above.bound) == (1_000, -9_000, -1)
    assert above.fraction == -9.0
    assert data_transfer(SIZES, LOSSES, 1_000, 5.0).bound == -1   # ties the smallest size: at most that


def test_a_non_monotone_curve_uses_its_first_crossing():
    result = data_transfer(SIZES + [1_000_000], [5.0, 4.0, 4.5, 3.0], 1_000, 4.2)
    assert result.effective_bytes == pytest.approx(10 ** 3.8)
    assert result.bound == 0


def test_data_transfer_rejects_bad_curves():
    for sizes, losses in (([1000], [3.0]), ([1000, 1000], [3.0, 2.0]), ([2000, 1000], [3.0, 2.0]),
                          ([1000, 2000], [3.0])):
        with pytest.raises(ValueError, match="increasing positive sizes"):
            data_transfer(sizes, losses, 1000, 2.5)


def test_mlm_batches_mask_15_percent_of_the_text_tokens_80_10_10():
    tokenizer = ByteTokenizer()
    rng = np.random.default_rng(0)
    blocks = rng.integers(4, 260, (400, 64)).astype(np.int32)
    blocks[:, 0], blocks[:, 40] = tokenizer.bos_id, tokenizer.eos_id
    blocks[::2, 50:] = tokenizer.pad_id
    batch = mask_blocks(blocks, np.random.default_rng(1), tokenizer, num_predictions=10)
    again = mask_blocks(blocks, np.random.default_rng(1), tokenizer, num_predictions=10)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)            # deterministic from the seed
    real = batch["masked_weights"] > 0
    maskable = (~np.isin(blocks, tokenizer.special_ids)).sum()
    assert real.sum() / maskable == pytest.approx(0.15, abs=0.01)
    positions, targets = batch["masked_positions"][real], batch["masked_ids"][real]
    rows = np.nonzero(real)[0]
    np.testing.assert_array_equal(targets, blocks[rows, positions])
    assert not np.isin(targets, tokenizer.special_ids).any()                # specials never predicted
    corrupted = batch["input_ids"][rows, positions]
    assert np.mean(corrupted == tokenizer.mask_id) == pytest.approx(0.8, abs=0.03)
    assert np.mean(corrupted == targets) == pytest.approx(0.1 + 0.1 / 256, abs=0.03)
    untouched = np.ones_like(blocks, bool)
    untouched[rows, positions] = False
    np.testing.assert_array_equal(batch["input_ids"][untouched], blocks[untouched])


def test_first_bytes_cuts_at_a_character_boundary():
    lines = ["abc", "\u00fcber", "xyz"]        # "über" is 5 bytes
    assert first_bytes(lines, 3) == ["abc"]
    assert first_bytes(lines, 4) == ["abc"]                  # the cut falls inside "ü": dropped
    assert first_bytes(lines, 6) == ["abc", "\u00fcb"]
    assert first_bytes(lines, 100) == lines


@pytest.fixture(scope="module")
def tiny_run(shared_data, tmp_path_factory):
    """(result, log lines, artifacts dir) of TINY_RUN on sw.txt for a random subject on 1 device."""
    artifacts, logs = tmp_path_factory.mktemp("dt_artifacts"), []
    ev = evaluator(text=str(shared_data / "mono" / "sw.txt"), **TINY_RUN)
    return ev.evaluate(make_context(random_subject(), artifacts_dir=str(artifacts), log=logs.append)), logs, artifacts


def test_tiny_run_on_swahili(tiny_run, shared_data):
    """The subject is the seed's own random init, so fine-tuning it *is* training from scratch:
    the same batches, masks and dropout give identical losses and D_T = 0 exactly."""
    result, logs, artifacts = tiny_run
    metrics = result.per_language["sw"]
    details = result.details
    print("sw from scratch, held-out loss by size:", dict(zip(details["sizes"], details["scratch_losses"])))
    assert details["finetuned_losses"] == details["scratch_losses"]
    assert (metrics["dt_bytes"], metrics["effective_fraction"], metrics["bound"]) == (0.0, 0.0, -1.0)
    assert metrics["effective_bytes"] == metrics["finetuned_bytes"] == 2000
    assert set(metrics) >= {"dt_bytes_2000", "dt_bytes_16000", "bound_16000", "finetuned_loss", "scratch_loss"}
    # trained runs score below the untrained start, itself near uniform over the 256 bytes
    assert details["initial_loss"]["model"] == pytest.approx(math.log(256), abs=0.3)
    assert max(details["scratch_losses"]) < details["initial_loss"]["model"] - 0.3
    assert result.artifacts == ["dt_loss_vs_bytes.png"] and (artifacts / result.artifacts[0]).stat().st_size > 0
    assert result.data_files == [str(shared_data / "mono" / "sw.txt")]
    assert any("step 12/12" in line for line in logs)


def test_same_losses_on_1_and_8_devices(tiny_run, shared_data):
    subject = random_subject(devices=8)
    # params already on the mesh, as in training: the donated train states must be copies of them
    subject.params = jax.device_put(subject.params, params_shardings(subject.model_config, subject.mesh,
                                                                     subject.rules))
    ev = evaluator(text=str(shared_data / "mono" / "sw.txt"), **TINY_RUN)
    on_8 = ev.evaluate(make_context(subject, log=lambda _: None)).details
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(subject.params))
    on_1 = tiny_run[0].details
    for curve in ("scratch_losses", "finetuned_losses"):
        np.testing.assert_allclose(on_8[curve], on_1[curve], rtol=1e-4)
    assert on_8["initial_loss"] == pytest.approx(on_1["initial_loss"], rel=1e-5)


def test_pretrained_model_transfers_to_unseen_swahili(pretrained_subject, shared_data, tmp_path):
    # pretrained on the first 3000 lines of sw.txt (and en, el, vi): fine-tune on lines it never saw
    text = tmp_path / "sw_unseen.txt"
    lines = (shared_data / "mono" / "sw.txt").read_text(encoding="utf-8").splitlines()[3000:]
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = evaluator(text=str(text), **TINY_RUN).evaluate(make_context(pretrained_subject, log=lambda _: None))
    metrics, details = result.per_language["sw_unseen"], result.details
    print("pretrained -> sw:", metrics, details)
    for finetuned, scratch in zip(details["finetuned_losses"], details["scratch_losses"]):
        assert finetuned < scratch - 0.5
    assert metrics["dt_bytes"] > 0 and metrics["bound"] in (0.0, 1.0)


def test_errors(shared_data, tmp_path):
    sw = str(shared_data / "mono" / "sw.txt")
    with pytest.raises(ConfigError, match=r"evals\.dt\.text"):
        evaluator()
    with pytest.raises(DataError, match="missing.txt: target-language text not found"):
        evaluator(text=str(tmp_path / "missing.txt"))
    for sizes in ("8000,2000", "2000,2000", "2000", "2k,8k", "0,100"):
        with pytest.raises(ConfigError, match=r"evals\.dt\.sizes.*increasing positive byte counts"):
            evaluator(text=sw, sizes=sizes)
    training = sum(len(line.encode()) for line in (shared_data / "mono" / "sw.txt").read_text("utf-8").splitlines()[:-200])
    with pytest.raises(ConfigError, match=rf"evals\.dt\.sizes.*2000000 bytes asked for.*has {training} bytes"):
        evaluator(text=sw, sizes="2000,2000000")
    small = tmp_path / "small.txt"
    small.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"evals\.dt\.heldout_lines.*only 2 lines"):
        evaluator(text=str(small), heldout_lines=2)
    with pytest.raises(ConfigError, match=r"evals\.dt\.steps"):
        evaluator(text=sw, steps=0)
    with pytest.raises(ConfigError, match=r"evals\.dt\.seq_len.*longer than the model's max_len 128"):
        evaluator(text=sw, seq_len=256).evaluate(make_context(random_subject()))
    with pytest.raises(ConfigError, match=r"evals\.dt\.batch_size.*multiple of the 8 batch shards"):
        evaluator(text=sw, batch_size=4).evaluate(make_context(random_subject(devices=8)))
