"""metrics.jsonl after a resume: one row per step, and the sampling tally carried on."""
import json

import numpy as np

from tests.helpers import tiny_config
from xlm_jax.modes.metrics_log import MetricsLog


def _write(path, rows, tail=""):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + tail)


def test_a_resume_drops_the_redone_steps_rows_and_carries_on_the_tally(tmp_path, capsys):
    rows = []
    for step in range(1, 16):
        rows.append({"step": step, "loss": 10.0 - step})
        if step % 5 == 0:
            rows.append({"step": step, "sampled": {"de": 0.25, "en": 0.75}, "sampled_examples": 40 * step})
        if step == 10:
            rows.append({"step": step, "evals": {"mlm": {"mean_loss": 5.0}}})
    _write(tmp_path / "metrics.jsonl", rows, tail='{"step": 16, "lo')   # a line cut short by the kill
    # dropped: steps 11-15 (5 rows), the tally at 15, the cut line: 7
    log = MetricsLog(str(tmp_path), tiny_config(), 20, languages=["de", "en"], probs=[0.3, 0.7], resume_step=10)
    log.close()
    with open(tmp_path / "metrics.jsonl") as f:
        kept = [json.loads(line) for line in f]
    assert kept == [row for row in rows if row["step"] <= 10]
    assert "metrics.jsonl: dropped 7 row(s) of the steps after 10" in capsys.readouterr().out
    np.testing.assert_array_equal(log.sampled, [100, 300])   # the tally at step 10: 400 examples


def test_a_run_from_its_own_last_step_keeps_every_row(tmp_path, capsys):
    rows = [{"step": step, "loss": 1.0} for step in range(1, 6)]
    _write(tmp_path / "metrics.jsonl", rows)
    log = MetricsLog(str(tmp_path), tiny_config(), 5, resume_step=5)
    log.close()
    with open(tmp_path / "metrics.jsonl") as f:
        assert [json.loads(line) for line in f] == rows
    assert "dropped" not in capsys.readouterr().out
