"""Objective examples. MLM: fairseq/XLM-R stream packing of a language's text into fixed blocks."""
import numpy as np


def pack_stream(sentences: list[np.ndarray], seq_len: int, bos_id: int, eos_id: int, pad_id: int) -> np.ndarray:
    """[num_blocks, seq_len] int32: `s1 </s> s2 </s> ...` cut every seq_len - 1 tokens, `<s>` in front.

    Blocks cross sentence boundaries (one contiguous stream, as XLM-R's `--sample-break-mode
    none`); only the last block is padded.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (<s> plus one token), got {seq_len}")
    body = seq_len - 1
    if not sentences:
        return np.zeros((0, seq_len), np.int32)
    lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
    ends = np.cumsum(lengths + 1)                  # stream position just past each sentence's </s>
    num_blocks = -(-int(ends[-1]) // body)
    stream = np.full(num_blocks * body, pad_id, np.int32)
    stream[:ends[-1]] = eos_id
    is_token = np.ones(int(ends[-1]), bool)
    is_token[ends - 1] = False
    stream[:ends[-1]][is_token] = np.concatenate(sentences).astype(np.int32, copy=False)
    blocks = np.empty((num_blocks, seq_len), np.int32)
    blocks[:, 0] = bos_id
    blocks[:, 1:] = stream.reshape(num_blocks, body)
    return blocks
