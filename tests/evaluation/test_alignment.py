"""CKA and Procrustes: against an independent HSIC implementation, their invariances, exact
recovery of a known rotation (also through the evaluator), real Tatoeba data, and errors."""
import numpy as np
import pytest

from tests.evaluation.conftest import random_subject
from xlm_jax.errors import ConfigError, DataError
from xlm_jax.evaluation.alignment import (
    Alignment,
    cka_between,
    layer_scores,
    linear_cka,
    procrustes,
)
from xlm_jax.evaluation.encoding import make_context
from xlm_jax.evaluation.evaluator import EvalContext
from xlm_jax.evaluation.registry import evaluator_options
from xlm_jax.evaluation.subjects import random_init_subject


def evaluator(**options) -> Alignment:
    ev = Alignment("align", evaluator_options("alignment", **options))
    ev.check()
    return ev


def hsic_cka(x, y) -> float:
    """CKA from its definition: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, L = Y Y^T,
    HSIC(K, L) = tr(K H L H) / (n - 1)^2 with the centering matrix H = I - 11^T / n."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(k, l):
        return np.trace(k @ h @ l @ h) / (n - 1) ** 2

    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def random_rotation(rng, size: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(size, size)))
    return q * np.sign(np.diag(r))


def test_linear_cka_matches_the_hsic_definition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 12)) + 3.0                      # uncentered on purpose
    y = np.tanh(x[:, :7] @ rng.normal(size=(7, 9))) + rng.normal(scale=0.5, size=(60, 9))
    for a, b in ((x, y), (x, rng.normal(size=(60, 5))), (y, y ** 2)):
        assert linear_cka(a, b) == pytest.approx(hsic_cka(a, b), rel=1e-10)
    assert 0.0 < linear_cka(x, y) < 1.0


def test_cka_invariances():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 10)), rng.normal(size=(50, 8))
    q = random_rotation(rng, 10)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)
    reference = linear_cka(x, y)
    assert linear_cka(0.3 * x @ q + 5.0, y) == pytest.approx(reference, rel=1e-10)   # rotation, scale, shift
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), rel=1e-12)
    # not invariant to anisotropic scaling: the test above could fail
    stretched = x * np.r_[10.0, np.ones(9)]
    assert abs(linear_cka(stretched, y) - reference) > 1e-3


def test_procrustes_recovers_a_rotation_exactly():
    rng = np.random.default_rng(2)
    x, q = rng.normal(size=(40, 16)), random_rotation(rng, 16)
    w = procrustes(x, x @ q)
    np.testing.assert_allclose(w, q, atol=1e-10)
    np.testing.assert_allclose(w.T @ w, np.eye(16), atol=1e-12)
    # from noisy targets it is still orthogonal, and better than no map
    noisy = x @ q + rng.normal(scale=0.3, size=x.shape)
    w = procrustes(x, noisy)
    np.testing.assert_allclose(w.T @ w, np.eye(16), atol=1e-10)
    assert np.linalg.norm(x @ w - noisy) < np.linalg.norm(x - noisy)


def test_cka_between_two_models_on_the_same_sentences():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(3, 30, 8))
    b = np.stack([a[2] @ random_rotation(rng, 8), rng.normal(size=(30, 8))])
    matrix = cka_between(a, b)
    assert matrix.shape == (3, 2)
    assert matrix[2, 0] == pytest.approx(1.0)
    assert matrix[0, 1] == pytest.approx(linear_cka(a[0], b[1]))
    np.testing.assert_allclose(np.diag(cka_between(a, a)), 1.0)


def write_pairs(tmp_path, n: int):
    xx, en = tmp_path / "pairs.de", tmp_path / "pairs.en"
    xx.write_text("".join(f"Satz {i}\n" for i in range(n)), encoding="utf-8")
    en.write_text("".join(f"sentence {i}\n" for i in range(n)), encoding="utf-8")
    return f"{xx}|{en}"


def test_a_rotated_copy_is_aligned_perfectly_by_procrustes(tmp_path):
    rng = np.random.default_rng(4)
    subject = random_subject()
    layers = subject.model_config.num_layers + 1
    # 40 fit pairs > 32 dims: the rotation is determined (with fewer, only on the fit vectors' span)
    vectors = {f"Satz {i}": rng.normal(size=(layers, 32)) for i in range(80)}
    rotations = [random_rotation(rng, 32) for _ in range(layers)]
    vectors.update({f"sentence {i}": np.stack([v[k] @ rotations[k] for k in range(layers)])
                    for i, v in enumerate(list(vectors.values()))})
    calls = []

    def encode(texts, layers=None, pooling="mean", language=None):
        calls.append(layers)
        return np.stack([vectors[t] for t in texts], axis=1).astype(np.float32)

    result = evaluator(data=write_pairs(tmp_path, 80)).evaluate(EvalContext(subject, encode, log=lambda _: None))
    assert calls == [(0, 1, 2)] * 2                         # every layer, one call per side
    metrics = result.per_language["de"]
    for k in range(layers):
        assert metrics[f"procrustes_acc_layer_{k}"] == 1.0
        assert metrics[f"cka_layer_{k}"] == pytest.approx(1.0, abs=1e-5)
        assert metrics[f"acc_layer_{k}"] < 0.5              # unrotated, the sides do not match
    assert result.details["fit_pairs"] == {"de": 40}


def test_tatoeba_with_a_random_model(shared_data, tmp_path):
    subject = random_subject()
    ev = evaluator(data=str(shared_data / "tatoeba"), languages="deu,ell", max_pairs=60)
    context = make_context(subject, artifacts_dir=str(tmp_path), log=lambda _: None)
    result = ev.evaluate(context)
    assert sorted(result.per_language) == ["deu", "ell"]
    assert len(result.per_language["deu"]) == 3 * 3           # cka / acc / procrustes_acc x 3 layers
    assert result.artifacts == ["align_cka.png", "align_retrieval_by_layer.png"]
    assert all((tmp_path / name).stat().st_size > 0 for name in result.artifacts)
    assert len(result.data_files) == 4
    # the evaluator's numbers are those of the pure functions on the encoded sides
    deu = ev.pair_sets[0]
    xx, en = context.encode(deu.source, layers=(0, 1, 2)), context.encode(deu.target, layers=(0, 1, 2))
    expected = layer_scores(xx, en, fit_count=30)
    assert result.details["curves"]["deu"] == expected
    assert result.summary["best_mean_cka"] == max(result.details["mean"]["cka"])


def test_pretrained_model_layer_curves(pretrained_subject, shared_data):
    """What the briefly trained model shows, printed for the report. Asserted: the measurement's
    properties, not the paper's finding (a 3-layer model after 300 steps need not show it)."""
    ev = evaluator(data=str(shared_data / "tatoeba"), languages="ell,vie,swh", max_pairs=200)
    context = make_context(pretrained_subject, log=lambda _: None)
    trained = ev.evaluate(context)
    baseline = random_init_subject(pretrained_subject)
    untrained = ev.evaluate(make_context(baseline, context.encoder, log=lambda _: None))   # compiled shapes reused
    for name, result in (("pretrained", trained), ("random-init", untrained)):
        print(name, {metric: np.round(curve, 3).tolist() for metric, curve in result.details["mean"].items()})
    layers = pretrained_subject.model_config.num_layers + 1
    for result in (trained, untrained):
        for curve in result.details["mean"].values():
            assert len(curve) == layers and all(0.0 <= v <= 1.0 for v in curve)
    assert trained.details["mean"]["cka"] != pytest.approx(untrained.details["mean"]["cka"], abs=1e-3)
    # two models on the same sentences: every layer of a model is CKA 1 with itself
    texts = ev.pair_sets[0].source[:100]
    vectors = context.encode(texts, layers=tuple(range(layers)))
    np.testing.assert_allclose(np.diag(cka_between(vectors, vectors)), 1.0, atol=1e-9)


def test_compare_with_another_run_gives_cka_of_every_layer_pair(pretrained_subject, pretrained_run, shared_data,
                                                                 tmp_path):
    """Against its own run directory the model is CKA 1 with itself on the diagonal, and less between
    different layers; the matrix is also drawn."""
    ev = evaluator(data=str(shared_data / "tatoeba"), languages="deu", max_pairs=60, compare_with=str(pretrained_run))
    result = ev.evaluate(make_context(pretrained_subject, log=lambda _: None, artifacts_dir=str(tmp_path)))
    between = np.array(result.details["cka_vs_other"])
    layers = pretrained_subject.model_config.num_layers + 1
    assert between.shape == (layers, layers)
    np.testing.assert_allclose(np.diag(between), 1.0, atol=1e-6)
    assert between[0, layers - 1] < 0.99
    assert result.summary["cka_vs_other_layer_0"] == pytest.approx(1.0, abs=1e-6)
    assert (tmp_path / "align_cka_vs_other.png").exists()


def test_errors(shared_data, tmp_path):
    with pytest.raises(ConfigError, match=r"evals\.align\.data is not set"):
        evaluator()
    with pytest.raises(ConfigError, match=r"evals\.align\.max_pairs"):
        evaluator(data=write_pairs(tmp_path, 10), max_pairs=3)
    with pytest.raises(ConfigError, match=r"evals\.align\.fit_fraction"):
        evaluator(data=write_pairs(tmp_path, 10), fit_fraction=1.0)
    with pytest.raises(DataError, match=r"pairs\.de: 5 translation pairs for de.*fewer than 2 pairs"):
        evaluator(data=write_pairs(tmp_path, 5), fit_fraction=0.8)
    (tmp_path / "short.en").write_text("one\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.de has 10 lines and .*short\.en has 1"):
        evaluator(data=write_pairs(tmp_path, 10).split("|")[0] + f"|{tmp_path / 'short.en'}")
    tsv = tmp_path / "en-de.tsv"
    tsv.write_text("a\tb\nonly one column\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"en-de\.tsv:2: expected 2 tab-separated columns"):
        evaluator(data=str(tsv))
    with pytest.raises(DataError, match="Tatoeba file of language 'xyz'.*not found"):
        evaluator(data=str(shared_data / "tatoeba"), languages="xyz")
