"""xlm_jax -> transformers export: loads with no missing or unexpected weights, gives the same
logits, and comes back bit-exact (xlm_jax -> transformers -> xlm_jax)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_config
from xlm_jax.errors import CheckpointError, ConfigError
from xlm_jax.interop.hf import export_hf, import_hf
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.models.vocab_padding import VOCAB_ROW_PARAMS, padded_vocab_size, resize_vocab_rows

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def sentencepiece(shared_data):
    """A 302-id XLM-R-layout SentencePiece model trained on English and Welsh."""
    from xlm_jax.data.tokenizers import train_sentencepiece

    text = {lang: (shared_data / "mono" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:300]
            for lang in ("en", "cy")}
    return train_sentencepiece(text, {"en": 0.5, "cy": 0.5}, 302, input_sentence_size=600,
                               character_coverage=1.0, byte_fallback=False, seed=0), text


def wordpiece(vocab_size: int):
    """A WordPiece vocab of BERT's specials, lowercase letters, '##' continuations and filler words."""
    from xlm_jax.data.tokenizers import WordPieceTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list(".,!?'")
    vocab = BERT_SPECIALS + letters + [f"##{c}" for c in letters[:26]] + ["the", "and", "##ing"]
    vocab += [f"word{i}" for i in range(vocab_size - len(vocab))]
    return WordPieceTokenizer(vocab, do_lower_case=True)


def random_params(model_config, seed=0):
    """Initialized params with every leaf perturbed, so LayerNorms and biases are not 1s and 0s."""
    ids = jnp.ones((1, 8), jnp.int32)
    params = jax.device_get(MaskedLM(model_config).init(jax.random.key(seed), ids)["params"])
    params = flax_unbox(params)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (np.asarray(x) + rng.normal(0, 0.1, x.shape)).astype(np.float32), params)


def flax_unbox(tree):
    import flax
    return flax.core.meta.unbox(tree)


def model_config(family: str, vocab_size: int, pooler=False):
    m = tiny_config(num_layers=2, hidden_size=48, num_heads=6, mlp_dim=80, vocab_size=vocab_size,
                    max_len=40).model
    if family == "bert":
        m.position_offset, m.pad_token_id, m.type_vocab_size, m.layer_norm_eps = 0, 0, 2, 1e-12
    m.pooler = pooler
    return m


def family_tokenizer(family, sentencepiece):
    return sentencepiece[0] if family == "xlmr" else wordpiece(120)


@pytest.mark.parametrize("pooler", [False, True], ids=["masked_lm", "with_pooler"])
@pytest.mark.parametrize("family", ["xlmr", "bert"])
def test_round_trip_through_transformers_is_bit_exact(tmp_path, sentencepiece, family, pooler):
    tokenizer = family_tokenizer(family, sentencepiece)
    m = model_config(family, tokenizer.vocab_size, pooler)
    params = random_params(m)
    export_hf(m, params, tokenizer, str(tmp_path / "hf"))
    back = import_hf(str(tmp_path / "hf"))
    for field in ("num_layers", "hidden_size", "num_heads", "mlp_dim", "vocab_size", "max_len",
                  "type_vocab_size", "pad_token_id", "position_offset", "layer_norm_eps", "pooler"):
        assert back.model[field] == m[field], field
    assert back.has_head and not back.dropped
    # Back in the model layout (vocabulary rows padded, the padding zero); bit-exact at the true size.
    assert jax.tree.map(np.shape, back.params) == jax.tree.map(np.shape, params)
    for path in VOCAB_ROW_PARAMS:
        table = back.params[path[0]]
        for key in path[1:]:
            table = table[key]
        assert table.shape[0] == padded_vocab_size(m) > m.vocab_size
        assert not table[m.vocab_size:].any()
    flat, flat_back = (jax.tree_util.tree_flatten_with_path(resize_vocab_rows(p, m.vocab_size))[0]
                       for p in (params, back.params))
    assert [path for path, _ in flat] == [path for path, _ in flat_back]
    for (path, want), (_, got) in zip(flat, flat_back):
        np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("family", ["xlmr", "bert"])
def test_transformers_loads_the_export_without_warnings_and_agrees(tmp_path, sentencepiece, family):
    tokenizer = family_tokenizer(family, sentencepiece)
    m = model_config(family, tokenizer.vocab_size)
    params = random_params(m, seed=1)
    export_hf(m, params, tokenizer, str(tmp_path))
    cls = transformers.XLMRobertaForMaskedLM if family == "xlmr" else transformers.BertForMaskedLM
    reference, info = cls.from_pretrained(str(tmp_path), output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    auto = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path))
    assert type(auto) is cls

    texts = ["the cat and the dog", "Mae'r gath yn cysgu.", "a"]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    encoded = hf_tokenizer(texts, padding=True, return_tensors="np")
    ours = [np.concatenate([[tokenizer.bos_id], ids, [tokenizer.eos_id]]) for ids in tokenizer.encode(texts)]
    for row, want in zip(encoded["input_ids"], ours):
        np.testing.assert_array_equal(row[:len(want)], want)
    ids, mask = encoded["input_ids"], encoded["attention_mask"].astype(bool)
    with torch.no_grad():
        expected = reference.eval()(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64))).logits
    logits = MaskedLM(m).apply({"params": params}, jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(logits)[..., :m.vocab_size][mask], expected.numpy()[mask], atol=1e-4)


def test_export_refuses_to_overwrite_and_leaves_nothing_behind(tmp_path, sentencepiece):
    tokenizer = sentencepiece[0]
    m = model_config("xlmr", tokenizer.vocab_size)
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    params = random_params(m)
    with pytest.raises(CheckpointError, match="not empty"):
        export_hf(m, params, tokenizer, str(target))
    assert [p.name for p in target.iterdir()] == ["notes.txt"]

    m.num_languages = 3
    with pytest.raises(ConfigError, match="model.num_languages"):
        export_hf(m, params, tokenizer, str(tmp_path / "lang"))
    m.num_languages, m.vocab_size = 0, 400
    with pytest.raises(CheckpointError, match="tokenizer has 302 ids but model.vocab_size is 400"):
        export_hf(m, params, tokenizer, str(tmp_path / "vocab"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # no staging directories left
