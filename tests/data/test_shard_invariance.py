"""The global batches are the same whatever the number of processes, each of which reads only its shards.

Processes are threads here (tests/data/processes.py), running the same collectives as
modes/train.py; tests/train/test_loop.py runs real processes on 127.0.0.1.
"""
import gzip
import re

import numpy as np
import pytest

from tests.helpers import objective_streams
from xlm_jax.config import default_config
from xlm_jax.modes.prepare import validate
from xlm_jax.data.pipeline import eval_batches, train_batches
from xlm_jax.data.prepare import prepare_data
from xlm_jax.data.text import Processes, read_text, tokenizer_text
from xlm_jax.errors import DataError

from processes import run_processes

BATCH, SHARDS = 16, 4


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    """Plain files, two files of one language (data.files), a .gz file shards share by line, a TSV
    whose sides feed two languages, and yo, small enough to be replicated."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "dir").mkdir()

    def head(name, n, start=0):
        return (shared_data / "mono" / f"{name}.txt").read_text(encoding="utf-8").split("\n")[start:start + n]

    (root / "dir" / "en.txt").write_text("\n".join(head("en", 300)) + "\n", encoding="utf-8")
    (root / "dir" / "hy.txt.gz").write_bytes(gzip.compress(("\n".join(head("hy", 200)) + "\n").encode()))
    (root / "dir" / "yo.txt").write_text("\r\n".join(head("yo", 25)), encoding="utf-8")   # CRLF, no last newline
    pairs = (shared_data / "parallel" / "tico19" / "en-sw.tsv").read_text(encoding="utf-8").split("\n")[:150]
    (root / "dir" / "en-sw.tsv").write_text("\n".join(pairs) + "\n", encoding="utf-8")
    (root / "el_a.txt").write_text("\n".join(head("el", 120)) + "\n", encoding="utf-8")
    (root / "el_b.txt").write_text("\n".join(head("el", 90, 120)) + "\n", encoding="utf-8")
    return root


def _config(corpus, **data):
    c = default_config()
    c.data.corpus_dir, c.data.files = str(corpus / "dir"), f"el:{corpus}/el_a.txt,{corpus}/el_b.txt"
    c.data.seq_len, c.data.shards, c.data.eval_sentences_per_language = 32, SHARDS, 24
    c.data.tokenizer_sentences, c.data.byte_fallback, c.data.alpha = 2000, False, 0.5
    c.model.vocab_size, c.train.batch_size, c.train.seed, c.data.eval_batches = 400, BATCH, 5, 2
    c.data.update(data)
    return validate(c)


def _prepare_all(config, count, workdir):
    logs = [[] for _ in range(count)]
    data = run_processes(count, lambda p: prepare_data(config, str(workdir), logs[p.index].append, processes=p))
    return data, logs


def _take(iterator, n):
    """The next n steps' MLM batches (train_batches yields {stream name: batch}; MLM alone by default)."""
    return [next(iterator)["mlm"] for _ in range(n)]


def _assert_rows_concatenate(whole: list[dict], parts: list[list[dict]]):
    assert len(whole) == len(parts[0])
    for step, batch in enumerate(whole):
        for key in batch:
            np.testing.assert_array_equal(batch[key], np.concatenate([part[step][key] for part in parts]),
                                          err_msg=f"step {step} {key}")


@pytest.mark.parametrize("counts,data", [
    ((2, 4), {}),
    ((2,), {"sampling_unit": "tokens", "mask_sample_alpha": 0.5, "max_sentences_per_language": 250}),
])
def test_global_batches_do_not_depend_on_the_process_count(corpus, tmp_path, counts, data):
    config = _config(corpus, **data)
    (one,), (one_logs,) = _prepare_all(config, 1, tmp_path / "one")
    assert one.replicated == ["yo"] and "yo" in one.evaluated and "replicated" in "\n".join(one_logs)
    whole_train = _take(train_batches(one, config, start_step=2, streams=objective_streams(config)), 3)
    whole_eval = {lang: eval_batches(one, config, i) for i, lang in enumerate(one.languages)}
    bytes_one = _bytes_read(one_logs)
    unzipped = len(gzip.decompress((corpus / "dir" / "hy.txt.gz").read_bytes()))
    for count in counts:
        parts, logs = _prepare_all(config, count, tmp_path / f"p{count}")
        for part in parts:
            assert (part.languages, part.counts, part.evaluated) == (one.languages, one.counts, one.evaluated)
            assert part.probs == one.probs and part.tokenizer.model_proto == one.tokenizer.model_proto
            if part.token_counts is not None:
                np.testing.assert_array_equal(part.token_counts, one.token_counts)
        assert [p.shards for p in parts] == [range(i * SHARDS // count, (i + 1) * SHARDS // count)
                                             for i in range(count)]
        streams = objective_streams(config)
        _assert_rows_concatenate(whole_train, [_take(train_batches(p, config, start_step=2, streams=streams), 3)
                                               for p in parts])
        for i, lang in enumerate(one.languages):
            _assert_rows_concatenate(whole_eval[lang], [eval_batches(p, config, i) for p in parts])
        # each process reads its byte ranges of the plain text, about 1/count of it, and all of the .gz
        # file (shared by line); they add up to the text read by one process
        read = [_bytes_read(log) - unzipped for log in logs]
        assert sum(read) == bytes_one - unzipped and max(read) < 1.3 * sum(read) / count
    assert all(len(batches) == 2 for batches in whole_eval.values())


def _bytes_read(logs: list[str]) -> int:
    line = next(line for line in logs if line.startswith("data shards"))
    return int(re.search(r"\(([\d,]+) bytes of text\)", line).group(1).replace(",", ""))


def test_held_out_text_and_counts_follow_the_shard_rules(corpus):
    """Sharded languages hold out the tail of each shard, a replicated one the tail of all of it."""
    config = _config(corpus)
    text = read_text(config, log=lambda _: None)
    assert text.replicated == ["yo"] and text.languages == ["el", "en", "hy", "sw", "yo"]
    for lang in text.languages:
        row = text.sentences[text.languages.index(lang)]
        if lang == "yo":   # replicated: the last tenth of all 25 sentences, as with one shard
            assert row.sum() == 25 and row.min() < 10 and text.held_out_sizes(lang).tolist() == [2]
            lines = (corpus / "dir" / "yo.txt").read_text(encoding="utf-8").split("\n")
            assert text.own_train(lang) + text.own_held_out(lang) == [line.strip() for line in lines]
            assert len(text.own_held_out(lang)) == 2 and all(shard is text.train[lang][0] for shard in text.train[lang])
        else:              # ceil(24 / 4) = 6 per shard, at most a tenth of it
            assert text.held_out_sizes(lang).tolist() == np.minimum(6, row // 10).tolist()
            assert [len(h) for h in text.held_out[lang]] == text.held_out_sizes(lang).tolist()
        assert text.train_sentences(lang) == row.sum() - text.held_out_sizes(lang).sum()
    assert text.sentences[text.languages.index("el")].sum() == 210          # the two el files
    assert text.sentences[text.languages.index("en")].sum() == 300 + 150    # en.txt, then the TSV's en side


def test_the_tokenizer_sample_does_not_depend_on_the_process_count(corpus):
    config = _config(corpus)
    probs = {"el": 0.3, "en": 0.3, "hy": 0.2, "sw": 0.1, "yo": 0.1}

    def sample(processes: Processes):
        text = read_text(config, processes, log=lambda _: None)
        return tokenizer_text(text, probs, 200)

    one = sample(Processes())
    for pools in run_processes(2, sample):   # each process reads the other's shards' first lines
        assert pools == one
    assert len(one["yo"]) == 23 and all(len(one[lang]) >= 40 for lang in ("el", "en", "hy", "sw"))
    held_out = set(read_text(config, log=lambda _: None).own_held_out("en"))
    assert not held_out & set(one["en"])


def test_a_bad_line_in_one_process_shards_stops_every_process(corpus, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    lines = [f"sentence {i}".encode() for i in range(200)]
    lines[190] = b"broken \xff"
    (bad / "en.txt").write_bytes(b"\n".join(lines) + b"\n")
    (bad / "de.txt").write_text("Hallo\n" * 100, encoding="utf-8")
    config = _config(corpus)
    config.data.corpus_dir, config.data.files = str(bad), ""
    offset = b"\n".join(lines).index(b"broken")
    errors = []

    def prepare(processes):
        try:
            read_text(config, processes, log=lambda _: None)
        except DataError as e:
            errors.append((processes.index, str(e)))

    run_processes(2, prepare)
    assert sorted(index for index, _ in errors) == [0, 1]
    message = dict(errors)
    assert message[0] == f"process 1: {message[1]}"
    assert re.search(rf"en\.txt, line 191 at byte {offset}: byte offset {offset + 7} \(0xff\)", message[1])
