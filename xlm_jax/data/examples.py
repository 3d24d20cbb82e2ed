"""Objective examples as numpy int32 rows, before masking (xlm_jax.data.masking).

MLM: fairseq/XLM-R stream packing of a language's text into fixed blocks (pack_stream), the
same within each line (pack_lines) or within documents (pack_documents); `pack_text` picks by
`data.packing`. TLM: a translation pair as one sequence, InfoXLM's
continuous positions or XLM's reset ones, with per-token language ids (tlm_example). XLCo: the
two sides of a pair as separate query and key sequences (xlco_pair).
"""
import numpy as np


def pack_stream(sentences: list[np.ndarray], seq_len: int, bos_id: int, eos_id: int, pad_id: int) -> np.ndarray:
    """[num_blocks, seq_len] int32: `s1 </s> s2 </s> ...` cut every seq_len - 1 tokens, `<s>` in front.

    Blocks cross sentence boundaries (one contiguous stream, as XLM-R's `--sample-break-mode
    none`); only the last block is padded.
    """
    return _pack(sentences, seq_len, bos_id, eos_id, pad_id, per_line=False)


def pack_lines(sentences: list[np.ndarray], seq_len: int, bos_id: int, eos_id: int, pad_id: int) -> np.ndarray:
    """pack_stream within each line: no block holds text of two lines (a sentence or a paragraph).

    fairseq's `--sample-break-mode complete_doc` with one document per line, vectorized:
    equal to `pack_documents([[s] for s in sentences], ...)`. A line longer than a block
    continues in the next; the last block of every line is padded.
    """
    return _pack(sentences, seq_len, bos_id, eos_id, pad_id, per_line=True)


def _pack(sentences, seq_len, bos_id, eos_id, pad_id, *, per_line: bool) -> np.ndarray:
    """Each sentence and its </s> written into one stream, from a block boundary when `per_line`,
    then cut into blocks of seq_len - 1 tokens behind <s>; the rest is padding."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (<s> plus one token), got {seq_len}")
    body = seq_len - 1
    if not sentences:
        return np.zeros((0, seq_len), np.int32)
    tokens = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
    room = tokens + 1                                   # the sentence and its </s>
    if per_line:
        room = -(-room // body) * body                  # each line's stream padded to whole blocks
    starts = np.cumsum(room) - room
    stream = np.full(-(-int(room.sum()) // body) * body, pad_id, np.int32)
    stream[starts + tokens] = eos_id
    offsets = np.arange(int(tokens.sum())) - np.repeat(np.cumsum(tokens) - tokens, tokens)
    stream[np.repeat(starts, tokens) + offsets] = np.concatenate(sentences).astype(np.int32, copy=False)
    blocks = np.empty((len(stream) // body, seq_len), np.int32)
    blocks[:, 0] = bos_id
    blocks[:, 1:] = stream.reshape(-1, body)
    return blocks


def pack_text(sentences: list[np.ndarray], seq_len: int, tokenizer, packing: str = "stream") -> np.ndarray:
    """One language's MLM blocks by `data.packing`: "stream" (XLM-R) or "lines"."""
    pack = {"stream": pack_stream, "lines": pack_lines}[packing]
    return pack(sentences, seq_len, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)


def pack_documents(documents: list[list[np.ndarray]], seq_len: int, bos_id: int, eos_id: int,
                   pad_id: int) -> np.ndarray:
    """pack_stream within each document: no block holds text of two documents.

    fairseq's `--sample-break-mode complete_doc` idea with pack_stream's cutting: each document
    (a list of encoded sentences) is its own `s1 </s> s2 </s> ...` stream cut every seq_len - 1
    tokens, so the last block of every document is padded. What a document is belongs to the
    caller; `split_documents` splits text at blank lines (the usual one-sentence-a-line,
    blank-line-between-documents format of Wikipedia dumps), and a per-file corpus passes one
    document per file. Empty documents give no blocks.
    """
    packed = [pack_stream(doc, seq_len, bos_id, eos_id, pad_id) for doc in documents if len(doc)]
    return np.concatenate(packed) if packed else pack_stream([], seq_len, bos_id, eos_id, pad_id)


def split_documents(lines: list[str]) -> list[list[str]]:
    """Lines -> documents: runs of non-blank lines; one or more blank (whitespace) lines separate them."""
    documents, current = [], []
    for line in lines:
        if line.strip():
            current.append(line)
        elif current:
            documents.append(current)
            current = []
    if current:
        documents.append(current)
    return documents


def _fair_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Kept lengths of two sides sharing `budget` tokens: the longer side is cut first (HF's
    "longest_first"); when both are long each keeps half, the first side the odd token."""
    if len_a + len_b <= budget:
        return len_a, len_b
    half_b = budget // 2
    half_a = budget - half_b
    if len_a <= half_a:
        return len_a, budget - len_a
    if len_b <= half_b:
        return budget - len_b, len_b
    return half_a, half_b


def fair_lengths(len_a, len_b, budget: int, where=np.where):
    """_fair_lengths over arrays of lengths, with the array library's `where` (np.where, tf.where,
    jnp.where): one rule for the pipeline's TF rows and the pair classifier's on-device rows."""
    half_b = budget // 2
    half_a = budget - half_b
    fits, short_a, short_b = len_a + len_b <= budget, len_a <= half_a, len_b <= half_b
    keep_a = where(fits | short_a, len_a, where(short_b, budget - len_b, half_a))
    keep_b = where(fits, len_b, where(short_a, budget - len_a, where(short_b, len_b, half_b)))
    return keep_a, keep_b


def tlm_example(src_ids: np.ndarray, tgt_ids: np.ndarray, seq_len: int, tok, *, positions: str = "continuous",
                src_lang: int = 0, tgt_lang: int = 0, position_offset: int | None = None) -> dict[str, np.ndarray]:
    """One translation-LM example: `<s> src </s></s> tgt </s>` padded to seq_len; int32 [seq_len] each.

    input_ids: the pair as XLM-R/InfoXLM writes a sentence pair. When it does not fit, the two
      sides share the seq_len - 4 token budget (_fair_lengths: the longer side is cut first,
      from its end; two long sides keep (seq_len - 4) / 2 each, 254 at seq_len 512 as InfoXLM).
    position_ids: "continuous" (InfoXLM): position_offset, +1, ... through both segments, as the
      model computes itself for any input; "reset" (XLM TLM): the second segment `</s> tgt </s>`
      counts again from position_offset. position_offset defaults to tok.pad_id + 1 (fairseq /
      XLM-R, model.position_offset = pad + 1); padding sits at position_offset - 1 (= pad_id, as
      fairseq), or 0 when position_offset is 0.
    language_ids: src_lang over `<s> src </s>`, tgt_lang over `</s> tgt </s>`, src_lang on padding
      (which attention never sees); for models with language embeddings (model.num_languages).
    Masking needs nothing TLM-specific: mask_example chooses over both sides' ordinary tokens.
    """
    if positions not in ("continuous", "reset"):
        raise ValueError(f"positions must be \"continuous\" or \"reset\", not {positions!r}")
    if seq_len < 6:
        raise ValueError(f"seq_len must be at least 6 (4 specials plus one token a side), got {seq_len}")
    if position_offset is None:
        position_offset = tok.pad_id + 1
    keep_src, keep_tgt = _fair_lengths(len(src_ids), len(tgt_ids), seq_len - 4)
    first = np.concatenate([[tok.bos_id], np.asarray(src_ids[:keep_src]), [tok.eos_id]])
    second = np.concatenate([[tok.eos_id], np.asarray(tgt_ids[:keep_tgt]), [tok.eos_id]])
    used = len(first) + len(second)
    input_ids = np.full(seq_len, tok.pad_id, np.int32)
    input_ids[:used] = np.concatenate([first, second])
    position_ids = np.full(seq_len, position_offset - 1 if position_offset else 0, np.int32)
    if positions == "continuous":
        position_ids[:used] = position_offset + np.arange(used)
    else:
        position_ids[:len(first)] = position_offset + np.arange(len(first))
        position_ids[len(first):used] = position_offset + np.arange(len(second))
    language_ids = np.full(seq_len, src_lang, np.int32)
    language_ids[len(first):used] = tgt_lang
    return {"input_ids": input_ids, "position_ids": position_ids, "language_ids": language_ids}


def tlm_examples(src: list[np.ndarray], tgt: list[np.ndarray], seq_len: int, tok, *,
                 positions: str = "continuous", src_lang: int = 0, tgt_lang: int = 0,
                 both_directions: bool = True, position_offset: int | None = None) -> dict[str, np.ndarray]:
    """tlm_example of every pair, stacked [N, seq_len] (or [2N, seq_len]): with both_directions
    (InfoXLM, XLM), row 2i is pair i as src -> tgt and row 2i + 1 as tgt -> src (languages swapped)."""
    if len(src) != len(tgt):
        raise ValueError(f"{len(src)} source but {len(tgt)} target sentences")
    settings = dict(positions=positions, position_offset=position_offset)
    rows = []
    for s, t in zip(src, tgt):
        rows.append(tlm_example(s, t, seq_len, tok, src_lang=src_lang, tgt_lang=tgt_lang, **settings))
        if both_directions:
            rows.append(tlm_example(t, s, seq_len, tok, src_lang=tgt_lang, tgt_lang=src_lang, **settings))
    if not rows:
        return {key: np.zeros((0, seq_len), np.int32) for key in ("input_ids", "position_ids", "language_ids")}
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def _single(ids: np.ndarray, seq_len: int, tok) -> np.ndarray:
    out = np.full(seq_len, tok.pad_id, np.int32)
    body = np.asarray(ids[:seq_len - 2])
    out[0], out[1:len(body) + 1], out[len(body) + 1] = tok.bos_id, body, tok.eos_id
    return out


def xlco_pair(src_ids: np.ndarray, tgt_ids: np.ndarray, seq_len: int, tok) -> tuple[np.ndarray, np.ndarray]:
    """(query, key) for cross-lingual contrast (InfoXLM XLCo): each side alone as `<s> x </s>`,
    cut to seq_len - 2 tokens and padded; int32 [seq_len] each. Which side is the query, and
    any swapping, is the sampler's choice (InfoXLM swaps at random); positions are the model's own."""
    if seq_len < 3:
        raise ValueError(f"seq_len must be at least 3 (<s> x </s>), got {seq_len}")
    return _single(src_ids, seq_len, tok), _single(tgt_ids, seq_len, tok)


def xlco_pairs(src: list[np.ndarray], tgt: list[np.ndarray], seq_len: int, tok) -> tuple[np.ndarray, np.ndarray]:
    """xlco_pair of every pair, stacked: (query [N, seq_len], key [N, seq_len])."""
    if len(src) != len(tgt):
        raise ValueError(f"{len(src)} source but {len(tgt)} target sentences")
    pairs = [xlco_pair(s, t, seq_len, tok) for s, t in zip(src, tgt)]
    if not pairs:
        return np.zeros((0, seq_len), np.int32), np.zeros((0, seq_len), np.int32)
    return np.stack([q for q, _ in pairs]), np.stack([k for _, k in pairs])
