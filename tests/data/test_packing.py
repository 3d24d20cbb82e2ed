"""fairseq/XLM-R stream packing, checked by hand."""
import numpy as np

from xlm_jax.data.examples import pack_stream

BOS, PAD, EOS = 0, 1, 2


def test_stream_is_cut_every_seq_len_minus_one_tokens():
    sentences = [np.array([5, 6, 7]), np.array([8]), np.array([], np.int32), np.array([9, 10])]
    blocks = pack_stream(sentences, seq_len=4, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    # stream: 5 6 7 </s> 8 </s> </s> 9 10 </s>
    np.testing.assert_array_equal(blocks, [[BOS, 5, 6, 7],
                                           [BOS, EOS, 8, EOS],
                                           [BOS, EOS, 9, 10],
                                           [BOS, EOS, PAD, PAD]])
    assert blocks.dtype == np.int32


def test_no_padding_block_when_the_stream_fills_the_last_block():
    blocks = pack_stream([np.array([5, 6, 7])], seq_len=3, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    np.testing.assert_array_equal(blocks, [[BOS, 5, 6], [BOS, 7, EOS]])


def test_no_sentences_no_blocks():
    assert pack_stream([], seq_len=8, bos_id=BOS, eos_id=EOS, pad_id=PAD).shape == (0, 8)
