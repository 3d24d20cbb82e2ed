"""Retrieval and mining: scoring against hand-computed cases and loop re-implementations,
the evaluator on real Tatoeba / TSV data, 1 vs 8 devices, and every user-facing error."""
import os
import re
import types

import numpy as np
import pytest

from tests.evaluation.conftest import random_subject
from xlm_jax.errors import ConfigError, DataError
from xlm_jax.evaluation import retrieval
from xlm_jax.evaluation.encoding import make_context
from xlm_jax.evaluation.evaluator import EvalContext
from xlm_jax.evaluation.registry import EVALUATORS, evaluator_options


def make_evaluator(name="tatoeba", **options):
    return EVALUATORS["retrieval"](name, evaluator_options("retrieval", **options))


def evaluate(context, **options):
    evaluator = make_evaluator(**options)
    evaluator.check()
    return evaluator.evaluate(context)


def fake_context(vectors, num_layers=2, artifacts_dir=None) -> EvalContext:
    """A context whose encode looks sentence vectors up by text (a dict, or a function of
    (layer, text)), so that the answers are known without a model."""
    vector_of = vectors if callable(vectors) else (lambda layer, text: vectors[text])

    def encode(texts, layers, pooling, language=None):
        return np.array([[vector_of(layer, text) for text in texts] for layer in layers], np.float32)

    subject = types.SimpleNamespace(model_config=types.SimpleNamespace(num_layers=num_layers))
    return EvalContext(subject=subject, encode=encode, log=lambda message: None, artifacts_dir=artifacts_dir)


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- hand-made cases

# s1's nearest target is t1, but t1's nearest source is s0 (cos 0.949 > 0.316): 3/3 one way, 2/3 the other.
HAND_SOURCE = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
HAND_TARGET = np.array([[1, 0, 0], [3, 1, 0], [0, 0, 2]], np.float32)


def test_retrieval_accuracy_hand_made():
    accuracy = retrieval.retrieval_accuracy(HAND_SOURCE, HAND_TARGET)
    assert accuracy == {"acc_xx_to_en": 1.0, "acc_en_to_xx": 2 / 3}


def test_evaluator_on_file_pair_with_fake_encoder(tmp_path):
    source = write_lines(tmp_path / "a.de", ["eins", "zwei", "drei"])
    target = write_lines(tmp_path / "b.en", ["one", "two", "three"])
    vectors = dict(zip(["eins", "zwei", "drei", "one", "two", "three"], [*HAND_SOURCE, *HAND_TARGET]))
    # layer 0: the hand-made vectors; layer 2: every target moved onto the next pair's source: 0/3 both ways
    shifted = {"one": vectors["zwei"], "two": vectors["drei"], "three": vectors["eins"]}

    def by_layer(layer, text):
        return shifted.get(text, vectors[text]) if layer == 2 else vectors[text]

    context = fake_context(by_layer, artifacts_dir=str(tmp_path / "artifacts"))
    for data in (f"{source}|{target}", f"{target}|{source}"):   # the English side is found by its name
        result = evaluate(context, data=data, layer="0,-1")
        assert list(result.per_language) == ["de"]
        assert result.per_language["de"] == pytest.approx(
            {"acc_xx_to_en": 1, "acc_en_to_xx": 2 / 3, "acc": 5 / 6, "acc_layer0": 5 / 6, "acc_layer2": 0})
        assert result.summary["acc"] == pytest.approx(5 / 6) and result.summary["acc_layer2"] == 0.0
        assert result.details["per_layer"]["2"]["de"]["acc_xx_to_en"] == 0.0
        assert sorted(result.data_files) == sorted([source, target])
        assert result.majority == {}
        assert result.artifacts == ["tatoeba_acc_by_layer.png"]
        assert (tmp_path / "artifacts" / "tatoeba_acc_by_layer.png").stat().st_size > 0


def test_mining_hand_made_greedy_union():
    # k=1: each side's best is its cosine nearest. cos: x0 (1, 0), x1 (0.8, 0.6) against y0, y1;
    # margins: m(x0,y0) = 1/((1+1)/2) = 1, m(x1,y0) = 0.8/((0.8+1)/2) = 0.889,
    # m(x1,y1) = 0.6/((0.8+0.6)/2) = 0.857.
    # Candidates x0-y0 (fwd and bwd), x1-y0 (fwd), x1-y1 (bwd): x1-y0 loses, y0 being taken.
    x, y = np.array([[1, 0], [0.8, 0.6]]), np.array([[1, 0], [0, 1]])
    pairs, scores = retrieval.mine_candidates(x, y, k=1)
    assert pairs.tolist() == [[0, 0], [1, 1]]
    np.testing.assert_allclose(scores, [1.0, 0.6 / 0.7])


def test_best_threshold_hand_made():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    # F1 = 2 tp / (extracted + gold): with 4 gold, cuts give 2/5, 4/6, 4/7, 6/8: accept all
    assert retrieval.best_threshold(scores, np.array([1, 1, 0, 1], bool), 4) == 0.6
    # with 3 gold: 2/4, 4/5, 4/6, 4/7: accept two, threshold midway between 0.8 and 0.7
    assert retrieval.best_threshold(scores, np.array([1, 1, 0, 0], bool), 3) == pytest.approx(0.75)
    # a tie at 0.8 is accepted or rejected as one: {0.9} gives 2/4, {0.9, 0.8, 0.8} gives 4/6
    tied = np.array([0.9, 0.8, 0.8, 0.1])
    assert retrieval.best_threshold(tied, np.array([1, 0, 1, 0], bool), 3) == pytest.approx(0.45)
    assert retrieval.precision_recall_f1(tied, np.array([1, 0, 1, 0], bool), 3, 0.45) == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})


def test_mining_halves_drop_the_distractors_counterparts():
    source, target = [f"s{i}" for i in range(6)], [f"t{i}" for i in range(6)]
    assert retrieval.mining_halves(source, target, gold=2, distractors=2) == [
        (["s0", "s2"], ["t0", "t4"], 1), (["s1", "s3"], ["t1", "t5"], 1)]


def test_mining_evaluator_finds_identical_pairs(tmp_path):
    rng = np.random.default_rng(0)
    source = write_lines(tmp_path / "a.fr", [f"fr{i}" for i in range(40)])
    target = write_lines(tmp_path / "b.en", [f"en{i}" for i in range(40)])
    meaning = rng.normal(size=(40, 16))
    vectors = {f"fr{i}": meaning[i] for i in range(40)}
    vectors.update({f"en{i}": meaning[i] + 0.01 * rng.normal(size=16) for i in range(40)})
    result = evaluate(fake_context(vectors), data=f"{source}|{target}", mode="mining", distractors=10)
    assert result.per_language["fr"]["f1"] == 1.0 and result.per_language["fr"]["precision"] == 1.0
    assert result.details["sizes"]["fr"] == {"gold_pairs": 20, "distractors_per_side": 10}


# ---------------------------------------------------------------- against loop re-implementations


def cosine_loops(x, y):
    return [[float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) for b in y] for a in x]


def margin_loops(x, y, k):
    """score(x,y) = cos(x,y) / (sum_{z in kNN_y(x)} cos(x,z)/2k + sum_{z in kNN_x(y)} cos(y,z)/2k)."""
    cos = cosine_loops(x, y)
    columns = [[cos[i][j] for i in range(len(x))] for j in range(len(y))]
    kx, ky = min(k, len(y)), min(k, len(x))
    x_terms = [sum(sorted(row, reverse=True)[:kx]) / (2 * kx) for row in cos]
    y_terms = [sum(sorted(column, reverse=True)[:ky]) / (2 * ky) for column in columns]
    return [[cos[i][j] / (x_terms[i] + y_terms[j]) for j in range(len(y))] for i in range(len(x))]


def laser_max_loops(x, y, k):
    """LASER mine_bitexts.py --retrieval max, written out: best margin among the k cosine-nearest,
    forward and backward, then greedily by score with every sentence used once."""
    cos, margin = cosine_loops(x, y), margin_loops(x, y, k)
    candidates = []
    for i in range(len(x)):
        nearest = sorted(range(len(y)), key=lambda j: -cos[i][j])[:k]
        j = max(nearest, key=lambda j: margin[i][j])
        candidates.append((margin[i][j], i, j))
    for j in range(len(y)):
        nearest = sorted(range(len(x)), key=lambda i: -cos[i][j])[:k]
        i = max(nearest, key=lambda i: margin[i][j])
        candidates.append((margin[i][j], i, j))
    kept, seen_x, seen_y = [], set(), set()
    for score, i, j in sorted(candidates, key=lambda c: -c[0]):
        if i not in seen_x and j not in seen_y:
            seen_x.add(i)
            seen_y.add(j)
            kept.append((i, j, score))
    return kept


def test_nearest_neighbours_in_blocks_match_loops():
    rng = np.random.default_rng(0)
    queries, index = rng.normal(size=(11, 4)), rng.normal(size=(7, 4))
    cos = cosine_loops(queries, index)
    expected = [max(range(7), key=lambda j: cos[i][j]) for i in range(11)]
    for block in (1, 3, 1024):
        assert retrieval.nearest_neighbours(queries, index, block).tolist() == expected


@pytest.mark.parametrize("k", [1, 3, 50])
def test_margin_and_candidates_match_loops(k):
    rng = np.random.default_rng(k)
    x, y = rng.normal(size=(13, 6)) + 0.5, rng.normal(size=(17, 6)) + 0.5
    np.testing.assert_allclose(retrieval.margin_scores(x, y, k), margin_loops(x, y, k), rtol=1e-12)
    pairs, scores = retrieval.mine_candidates(x, y, k)
    expected = laser_max_loops(x, y, k)
    assert pairs.tolist() == [[i, j] for i, j, _ in expected]
    np.testing.assert_allclose(scores, [s for _, _, s in expected], rtol=1e-12)


def test_best_threshold_maximizes_f1_over_all_thresholds():
    rng = np.random.default_rng(1)
    for _ in range(20):
        scores = np.sort(np.round(rng.random(30), 1))[::-1]          # rounding makes ties
        correct = rng.random(30) < 0.5
        num_gold = int(correct.sum()) + 3
        brute = max(retrieval.precision_recall_f1(scores, correct, num_gold, t)["f1"] for t in scores)
        chosen = retrieval.precision_recall_f1(scores, correct, num_gold,
                                               retrieval.best_threshold(scores, correct, num_gold))["f1"]
        assert chosen == pytest.approx(brute)


# ---------------------------------------------------------------- a random-init model on real data


@pytest.fixture(scope="module")
def context1():
    return make_context(random_subject(devices=1))


@pytest.fixture(scope="module")
def tatoeba_result(shared_data, context1):
    return evaluate(context1, data=str(shared_data / "tatoeba"), languages="deu,fra", max_pairs=100)


def test_tatoeba_random_init(tatoeba_result, shared_data):
    assert sorted(tatoeba_result.per_language) == ["deu", "fra"]
    for metrics in tatoeba_result.per_language.values():
        assert set(metrics) == {"acc_xx_to_en", "acc_en_to_xx", "acc"}
        assert all(0.0 <= value <= 1.0 for value in metrics.values())
        assert metrics["acc"] == pytest.approx((metrics["acc_xx_to_en"] + metrics["acc_en_to_xx"]) / 2)
    # byte n-grams (names, numbers, cognates) put even random weights far above chance (1/100)
    assert tatoeba_result.summary["acc"] > 0.05
    assert tatoeba_result.details["sizes"] == {"deu": {"pairs": 100}, "fra": {"pairs": 100}}
    assert tatoeba_result.details["layers"] == [2]           # middle layer of 2
    assert tatoeba_result.chance == {lang: {k: 0.01 for k in ("acc_xx_to_en", "acc_en_to_xx", "acc")}
                                     for lang in ("deu", "fra")}                       # 1 / 100 pairs
    assert str(shared_data / "tatoeba" / "tatoeba.fra-eng.eng") in tatoeba_result.data_files


def test_same_results_on_8_devices_and_1(tatoeba_result, shared_data, context1):
    context8 = make_context(random_subject(devices=8))
    result8 = evaluate(context8, data=str(shared_data / "tatoeba"), languages="deu", max_pairs=100)
    assert result8.per_language == {"deu": tatoeba_result.per_language["deu"]}
    texts = (shared_data / "tatoeba" / "tatoeba.deu-eng.deu").read_text(encoding="utf-8").splitlines()[:100]
    np.testing.assert_allclose(context8.encode(texts), context1.encode(texts), atol=1e-5)


def test_file_pair_and_tsv_inputs_on_real_files(tatoeba_result, shared_data, context1, tmp_path):
    tatoeba = shared_data / "tatoeba"
    files = f"{tatoeba}/tatoeba.deu-eng.deu|{tatoeba}/tatoeba.deu-eng.eng"
    pair = evaluate(context1, data=files, max_pairs=100)
    assert pair.per_language == {"deu": tatoeba_result.per_language["deu"]}

    tsv = shared_data / "parallel" / "tatoeba_challenge" / "en-de.tsv"
    from_tsv = evaluate(context1, data=str(tsv), max_pairs=60)
    rows = [line.split("\t") for line in tsv.read_text(encoding="utf-8").splitlines()[:60]]
    german = write_lines(tmp_path / "first.de", [row[1] for row in rows])
    english = write_lines(tmp_path / "first.en", [row[0] for row in rows])
    assert from_tsv.per_language == evaluate(context1, data=f"{german}|{english}").per_language
    assert list(from_tsv.per_language) == ["de"] and from_tsv.data_files == [str(tsv)]

    both = evaluate(context1, data=f"{tsv},{shared_data}/parallel/tatoeba_challenge/en-fr.tsv", max_pairs=60)
    assert sorted(both.per_language) == ["de", "fr"]
    assert both.per_language["de"] == from_tsv.per_language["de"]


def test_mining_random_init_on_tatoeba(shared_data, context1, tmp_path):
    result = evaluate(context1, data=str(shared_data / "tatoeba"), languages="deu", mode="mining",
                      max_pairs=60, distractors=30, layer="0,middle")
    metrics = result.per_language["deu"]
    assert {"precision", "recall", "f1", "threshold", "f1_dev", "f1_layer0", "f1_layer2"} == set(metrics)
    assert all(0.0 <= metrics[key] <= 1.0 for key in ("precision", "recall", "f1", "f1_dev"))
    assert metrics["f1"] == metrics["f1_layer0"]
    assert result.details["sizes"]["deu"] == {"gold_pairs": 60, "distractors_per_side": 30}
    assert set(result.details["per_layer"]) == {"0", "2"} and result.details["k"] == 4


# ---------------------------------------------------------------- errors


def test_missing_language_file(shared_data):
    with pytest.raises(DataError, match=r"tatoeba\.xyz-eng\.xyz.*not found"):
        make_evaluator(data=str(shared_data / "tatoeba"), languages="deu,xyz").check()


def test_misaligned_pair_files_name_both(tmp_path):
    source = write_lines(tmp_path / "a.de", ["a", "b", "c"])
    target = write_lines(tmp_path / "b.en", ["a", "b"])
    with pytest.raises(DataError, match=re.escape(f"{source} has 3 lines and {target} has 2")):
        make_evaluator(data=f"{source}|{target}").check()


def test_bad_tsv_row_names_file_and_line(tmp_path):
    tsv = write_lines(tmp_path / "en-de.tsv", ["one\teins", "two\tzwei\tdrei", "three\tdrei"])
    with pytest.raises(DataError, match=re.escape(tsv) + r":2: expected 2 tab-separated columns .* found 3"):
        make_evaluator(data=tsv).check()


def test_empty_file(tmp_path):
    empty, target = write_lines(tmp_path / "a.de", []), write_lines(tmp_path / "b.en", ["one"])
    with pytest.raises(DataError, match=re.escape(empty) + ": .* is empty"):
        make_evaluator(data=f"{empty}|{target}").check()


@pytest.mark.parametrize("option, value, message", [
    ("mode", "bitext", "evals.tatoeba.mode: 'bitext'"),
    ("layer", "top", "evals.tatoeba.layer: 'top'"),
    ("layer", "1,x", "evals.tatoeba.layer"),
    ("pooling", "max", "evals.tatoeba.pooling"),
    ("k", 0, "evals.tatoeba.k"),
    ("data", "", "evals.tatoeba.data is not set"),
])
def test_bad_options_name_the_field(option, value, message, shared_data):
    options = {"data": str(shared_data / "tatoeba"), "languages": "deu", option: value}
    with pytest.raises(ConfigError, match=message):
        make_evaluator(**options).check()


def test_layer_beyond_the_model_names_the_field(tmp_path):
    data = f"{write_lines(tmp_path / 'a.de', ['x'])}|{write_lines(tmp_path / 'b.en', ['y'])}"
    with pytest.raises(ConfigError, match="evals.tatoeba.layer: layer 3 does not exist"):
        evaluate(fake_context({"x": [1.0], "y": [1.0]}, num_layers=2), data=data, layer="3")


def test_mining_needs_room_for_the_distractors(shared_data):
    message = r"evals.tatoeba.distractors=200 needs at least 402 .*jav \(205 pairs.*at most 101 distractors"
    with pytest.raises(DataError, match=message):
        make_evaluator(data=str(shared_data / "tatoeba"), languages="deu,jav", mode="mining").check()


def test_unknown_input_and_unnamed_languages(tmp_path):
    with pytest.raises(DataError, match="nothing.txt: not found"):
        make_evaluator(data=str(tmp_path / "nothing.txt")).check()
    tsv = write_lines(tmp_path / "pairs.tsv", ["one\teins"])
    with pytest.raises(ConfigError, match="evals.tatoeba.languages.*<src>-<tgt>.tsv"):
        make_evaluator(data=tsv).check()
    named = evaluate(fake_context({"one": [1.0], "eins": [1.0]}), data=tsv, languages="en-de")
    assert list(named.per_language) == ["de"]


# ------------------------------------------------------------------- the built-in corpus's held-out pairs


def test_builtin_heldout_pairs_are_never_read_by_a_run_capped_there():
    """`builtin-heldout:N`: no side of a pair is text of a run on those languages capped at N
    sentences per language, in any of its 4 shards (what the demo recipes read)."""
    from xlm_jax.config import default_config
    from xlm_jax.data.corpus import plan_corpus, read_shards
    from xlm_jax.data.sources import Reader
    from xlm_jax.evaluation.parallel_data import read_parallel_sets
    sets = read_parallel_sets("builtin-heldout:2000", "de,zh_CN")
    assert [s.language for s in sets] == ["de", "zh_CN"] and all(len(s.source) >= 500 for s in sets)
    assert all((s.source_language, s.target_language, s.files) == (s.language, "en", ()) for s in sets)
    data = default_config().data
    data.languages, data.max_sentences_per_language = "en,de,zh_CN", 2000
    corpora, _ = read_shards(plan_corpus(data, 4), range(4), Reader())
    read = {text for corpus in corpora.values() for lines in corpus.mono.values() for text in lines}
    read |= {text for corpus in corpora.values() for rows in corpus.parallel.values() for pair in rows for text in pair}
    assert len(read) > 5000
    for s in sets:
        assert not read & (set(s.source) | set(s.target))


@pytest.mark.parametrize("data, languages, error, message", [
    ("builtin-heldout:many", "de", ConfigError, r"write builtin-heldout:N"),
    ("builtin-heldout:5000", "", ConfigError, r"name the built-in corpus's languages"),
    ("builtin-heldout:5000", "de,xx_YY", DataError, r"no en-xx pairs for xx_YY"),
])
def test_builtin_heldout_errors(data, languages, error, message):
    from xlm_jax.evaluation.parallel_data import read_parallel_sets
    with pytest.raises(error, match=message):
        read_parallel_sets(data, languages)


def test_a_missing_tatoeba_directory_is_named_as_missing(tmp_path, monkeypatch):
    """A run trained elsewhere stores where its evaluation data was; evaluated from another
    directory, a relative path that points nowhere is named, not miscounted as one input."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^\.\./shared/data/tatoeba: not found \(a Tatoeba directory of deu,fra, a "
                                        r"\.tsv file or a file pair 'a\.de\|b\.en'; relative paths are taken from where "
                                        rf"the command runs, {tmp_path}\)"):
        make_evaluator(data="../shared/data/tatoeba", languages="deu,fra").check()


def test_the_suites_store_their_data_paths_absolute():
    from xlm_jax.evaluation.suites import demo_suite
    assert all(os.path.isabs(entry.data) for entry in demo_suite().values() if entry.get("data"))
