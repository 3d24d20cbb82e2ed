"""TLM, XLCo and document-packed MLM examples, laid out by hand (fairseq ids: <s>=0 <pad>=1 </s>=2)."""
import types

import numpy as np
import pytest

from xlm_jax.data.examples import (pack_documents, pack_lines, pack_stream, split_documents, tlm_example, tlm_examples,
                                   xlco_pair, xlco_pairs)

TOK = types.SimpleNamespace(bos_id=0, pad_id=1, eos_id=2, unk_id=3, mask_id=99)
BOS, PAD, EOS = 0, 1, 2
EN, DE = 4, 7


def test_tlm_continuous_positions_infoxlm():
    out = tlm_example(np.array([10, 11, 12]), np.array([20, 21]), 12, TOK, src_lang=EN, tgt_lang=DE)
    np.testing.assert_array_equal(out["input_ids"], [BOS, 10, 11, 12, EOS, EOS, 20, 21, EOS, PAD, PAD, PAD])
    # fairseq positions: pad_id + 1 = 2 onward through both sentences; padding at pad_id.
    np.testing.assert_array_equal(out["position_ids"], [2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 1, 1])
    np.testing.assert_array_equal(out["language_ids"], [EN] * 5 + [DE] * 4 + [EN] * 3)
    assert all(v.dtype == np.int32 and v.shape == (12,) for v in out.values())


def test_tlm_reset_positions_xlm():
    out = tlm_example(np.array([10, 11, 12]), np.array([20, 21]), 12, TOK, positions="reset",
                      src_lang=EN, tgt_lang=DE)
    np.testing.assert_array_equal(out["input_ids"], [BOS, 10, 11, 12, EOS, EOS, 20, 21, EOS, PAD, PAD, PAD])
    np.testing.assert_array_equal(out["position_ids"], [2, 3, 4, 5, 6, 2, 3, 4, 5, 1, 1, 1])
    np.testing.assert_array_equal(out["language_ids"], [EN] * 5 + [DE] * 4 + [EN] * 3)
    # A model without the fairseq offset (model.position_offset = 0): positions from 0, padding at 0.
    zero = tlm_example(np.array([10, 11, 12]), np.array([20, 21]), 12, TOK, positions="reset", position_offset=0)
    np.testing.assert_array_equal(zero["position_ids"], [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 0, 0])


def test_tlm_exact_fit_has_no_padding():
    out = tlm_example(np.array([10, 11]), np.array([20, 21]), 8, TOK)
    np.testing.assert_array_equal(out["input_ids"], [BOS, 10, 11, EOS, EOS, 20, 21, EOS])
    np.testing.assert_array_equal(out["position_ids"], np.arange(2, 10))


@pytest.mark.parametrize("src_len, tgt_len, kept", [
    (10, 10, (3, 3)),     # both long: half each of the 6 tokens left by the 4 specials
    (1, 10, (1, 5)),      # a short side keeps all; the long one gets the rest
    (10, 2, (4, 2)),
    (10, 11, (3, 3)),
])
def test_tlm_truncation_cuts_the_longer_side_first(src_len, tgt_len, kept):
    src, tgt = np.arange(100, 100 + src_len), np.arange(200, 200 + tgt_len)
    out = tlm_example(src, tgt, 10, TOK)["input_ids"]
    a, b = kept
    np.testing.assert_array_equal(out, [BOS, *src[:a], EOS, EOS, *tgt[:b], EOS])


def test_tlm_odd_budget_gives_the_extra_token_to_the_source():
    out = tlm_example(np.arange(100, 110), np.arange(200, 210), 9, TOK)["input_ids"]
    np.testing.assert_array_equal(out, [BOS, 100, 101, 102, EOS, EOS, 200, 201, EOS])


def test_tlm_infoxlm_keeps_254_tokens_a_side_at_512():
    out = tlm_example(np.full(400, 50), np.full(300, 60), 512, TOK)["input_ids"]
    assert np.count_nonzero(out == 50) == 254 and np.count_nonzero(out == 60) == 254


def test_tlm_examples_both_directions():
    src, tgt = [np.array([10, 11]), np.array([12])], [np.array([20]), np.array([21, 22, 23])]
    out = tlm_examples(src, tgt, 9, TOK, positions="reset", src_lang=EN, tgt_lang=DE)
    np.testing.assert_array_equal(out["input_ids"], [
        [BOS, 10, 11, EOS, EOS, 20, EOS, PAD, PAD],
        [BOS, 20, EOS, EOS, 10, 11, EOS, PAD, PAD],
        [BOS, 12, EOS, EOS, 21, 22, 23, EOS, PAD],
        [BOS, 21, 22, 23, EOS, EOS, 12, EOS, PAD],
    ])
    np.testing.assert_array_equal(out["language_ids"], [
        [EN, EN, EN, EN, DE, DE, DE, EN, EN],
        [DE, DE, DE, EN, EN, EN, EN, DE, DE],
        [EN, EN, EN, DE, DE, DE, DE, DE, EN],
        [DE, DE, DE, DE, DE, EN, EN, EN, DE],
    ])
    np.testing.assert_array_equal(out["position_ids"][1], [2, 3, 4, 2, 3, 4, 5, 1, 1])
    one_way = tlm_examples(src, tgt, 9, TOK, both_directions=False)
    np.testing.assert_array_equal(one_way["input_ids"], out["input_ids"][::2])
    assert tlm_examples([], [], 9, TOK)["input_ids"].shape == (0, 9)


def test_tlm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positions"):
        tlm_example(np.array([5]), np.array([6]), 8, TOK, positions="absolute")
    with pytest.raises(ValueError, match="seq_len"):
        tlm_example(np.array([5]), np.array([6]), 5, TOK)
    with pytest.raises(ValueError, match="target"):
        tlm_examples([np.array([5])], [], 8, TOK)


def test_tlm_on_real_pairs(shared_data):
    """Real en-de pairs through a real tokenizer: layout invariants and the fair budget."""
    from xlm_jax.data.tokenizers import ByteTokenizer
    tok = ByteTokenizer()
    lines = (shared_data / "parallel" / "tatoeba_challenge" / "en-de.tsv").read_text(encoding="utf-8").splitlines()
    pairs = [line.split("\t") for line in lines[:200]]
    src, tgt = tok.encode([p[0] for p in pairs]), tok.encode([p[1] for p in pairs])
    out = tlm_examples(src, tgt, 64, tok, positions="reset", src_lang=0, tgt_lang=1)
    ids = out["input_ids"]
    assert ids.shape == (400, 64) and np.all(ids[:, 0] == tok.bos_id)
    for row, positions, langs, (s, t) in zip(ids, out["position_ids"], out["language_ids"],
                                             [x for a, b in zip(src, tgt) for x in ((a, b), (b, a))]):
        eos = np.flatnonzero(row == tok.eos_id)
        assert len(eos) == 3 and eos[1] == eos[0] + 1
        first, second = row[1:eos[0]], row[eos[1] + 1:eos[2]]
        np.testing.assert_array_equal(first, s[:len(first)])
        np.testing.assert_array_equal(second, t[:len(second)])
        if len(s) + len(t) > 60:
            assert len(first) + len(second) == 60 and min(len(first), len(second)) >= min(30, len(s), len(t))
        assert positions[eos[1]] == tok.pad_id + 1 and langs[eos[1]] != langs[0]


def test_xlco_pair_layout():
    query, key = xlco_pair(np.array([10, 11, 12]), np.array([20]), 6, TOK)
    np.testing.assert_array_equal(query, [BOS, 10, 11, 12, EOS, PAD])
    np.testing.assert_array_equal(key, [BOS, 20, EOS, PAD, PAD, PAD])
    assert query.dtype == key.dtype == np.int32
    query, key = xlco_pair(np.arange(10, 20), np.array([20, 21, 22, 23]), 6, TOK)   # cut to seq_len - 2
    np.testing.assert_array_equal(query, [BOS, 10, 11, 12, 13, EOS])
    np.testing.assert_array_equal(key, [BOS, 20, 21, 22, 23, EOS])
    queries, keys = xlco_pairs([np.array([10]), np.array([11, 12])], [np.array([20, 21]), np.array([22])], 5, TOK)
    np.testing.assert_array_equal(queries, [[BOS, 10, EOS, PAD, PAD], [BOS, 11, 12, EOS, PAD]])
    np.testing.assert_array_equal(keys, [[BOS, 20, 21, EOS, PAD], [BOS, 22, EOS, PAD, PAD]])
    assert xlco_pairs([], [], 5, TOK)[0].shape == (0, 5)


def test_pack_documents_never_crosses_a_document_boundary():
    docs = [[np.array([5, 6, 7]), np.array([8, 9])],       # stream 5 6 7 </s> 8 9 </s>
            [],
            [np.array([10])]]                              # stream 10 </s>
    blocks = pack_documents(docs, seq_len=4, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    np.testing.assert_array_equal(blocks, [[BOS, 5, 6, 7],
                                           [BOS, EOS, 8, 9],
                                           [BOS, EOS, PAD, PAD],
                                           [BOS, 10, EOS, PAD]])
    # pack_stream of the same sentences (the default, XLM-R) fills the block across the boundary.
    np.testing.assert_array_equal(pack_stream([s for d in docs for s in d], 4, BOS, EOS, PAD),
                                  [[BOS, 5, 6, 7], [BOS, EOS, 8, 9], [BOS, EOS, 10, EOS]])
    assert pack_documents([], 4, BOS, EOS, PAD).shape == (0, 4)


def test_pack_lines_hand_computed():
    lines = [np.array([5, 6, 7]), np.array([8]), np.array([], np.int32), np.array([9, 10, 11, 12, 13])]
    np.testing.assert_array_equal(pack_lines(lines, 4, BOS, EOS, PAD),
                                  [[BOS, 5, 6, 7], [BOS, EOS, PAD, PAD],    # a line longer than a block
                                   [BOS, 8, EOS, PAD],
                                   [BOS, EOS, PAD, PAD],                    # an empty line: its </s> alone
                                   [BOS, 9, 10, 11], [BOS, 12, 13, EOS]])   # fills its last block exactly
    assert pack_lines([], 4, BOS, EOS, PAD).shape == (0, 4)


def test_pack_lines_equals_one_document_per_line():
    """The vectorized packer against pack_documents, which packs each line with pack_stream."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        seq_len = int(rng.integers(2, 10))
        lines = [rng.integers(5, 100, rng.integers(0, 25)).astype(np.int32) for _ in range(rng.integers(0, 12))]
        np.testing.assert_array_equal(pack_lines(lines, seq_len, BOS, EOS, PAD),
                                      pack_documents([[line] for line in lines], seq_len, BOS, EOS, PAD).reshape(-1, seq_len))


def test_pack_documents_on_real_text(shared_data):
    from xlm_jax.data.tokenizers import ByteTokenizer
    tok = ByteTokenizer()
    lines = (shared_data / "mono" / "en.txt").read_text(encoding="utf-8").splitlines()[:300]
    text = [line for i, line in enumerate(lines) for line in ([line, ""] if i % 7 == 6 else [line])]
    documents = split_documents(text)
    assert len(documents) == 43 and sum(map(len, documents)) == 300
    encoded = [tok.encode(doc) for doc in documents]
    blocks = pack_documents(encoded, 64, tok.bos_id, tok.eos_id, tok.pad_id)
    # Every block's text is a piece of exactly one document's stream, and the blocks of each
    # document, in order, are that stream.
    start = 0
    for doc in encoded:
        stream = np.concatenate([np.append(s, tok.eos_id) for s in doc])
        count = -(-len(stream) // 63)
        body = blocks[start:start + count, 1:].ravel()
        np.testing.assert_array_equal(body[:len(stream)], stream)
        assert np.all(body[len(stream):] == tok.pad_id)
        start += count
    assert start == len(blocks)


def test_split_documents():
    assert split_documents(["a", "b", "", "  ", "c", ""]) == [["a", "b"], ["c"]]
    assert split_documents(["", ""]) == []
