"""SentencePiece with the XLM-R / fairseq id layout, so XLM-R's own model loads unchanged.

fairseq puts `<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3 first, shifts every other SentencePiece
id by one and appends `<mask>`: XLM-R's 250,000 pieces become 250,002 ids.
"""
import io
import itertools
import os
import re
import uuid

import numpy as np
import sentencepiece as spm
from etils import epath

from xlm_jax.errors import DataError

_ENCODE_CHUNK = 65_536   # sentences per sp.encode call: bounds the Python int lists in memory


class SentencePieceTokenizer:
    """A SentencePiece model that speaks fairseq ids (no `<s>`/`</s>` added by encode)."""
    BOS_ID = 0
    PAD_ID = 1
    EOS_ID = 2
    UNK_ID = 3

    def __init__(self, model_proto: bytes):
        self.model_proto = bytes(model_proto)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        except RuntimeError:
            raise DataError("not a serialized SentencePiece model") from None
        layout = (self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if layout != (0, 1, 2):
            raise DataError(f"SentencePiece model has (unk, bos, eos) ids {layout}; the fairseq layout needs "
                            "(0, 1, 2), as in XLM-R's sentencepiece.bpe.model")
        size = self._sp.vocab_size()
        self._to_fairseq = np.arange(1, size + 1, dtype=np.int32)   # piece k >= 3 -> k + 1
        self._to_fairseq[:3] = (self.UNK_ID, self.BOS_ID, self.EOS_ID)

    @classmethod
    def load(cls, path) -> "SentencePieceTokenizer":
        path = epath.Path(path)
        if not path.exists():
            raise DataError(f"tokenizer file {path} does not exist")
        try:
            return cls(path.read_bytes())
        except DataError as e:
            raise DataError(f"{path}: {e}; delete it to train a new tokenizer, or point to a "
                            "SentencePiece .model file") from None

    def save(self, path) -> None:
        """Writes a temp file and renames it, so a killed run never leaves half a model."""
        path = epath.Path(path)
        tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
        tmp.write_bytes(self.model_proto)
        tmp.replace(path)

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size() + 2

    @property
    def mask_id(self) -> int:
        return self.vocab_size - 1

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.BOS_ID, self.PAD_ID, self.EOS_ID, self.UNK_ID, self.mask_id)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """int32 fairseq ids per text, encoded on all cores and mapped in one numpy gather."""
        out = []
        for start in range(0, len(texts), _ENCODE_CHUNK):
            pieces = self._sp.encode(list(texts[start:start + _ENCODE_CHUNK]), out_type=int,
                                     num_threads=os.cpu_count())
            lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
            flat = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int32, count=int(lengths.sum()))
            out.extend(np.split(self._to_fairseq[flat], np.cumsum(lengths)[:-1]))
        return out

    def id_to_piece(self, token_id: int) -> str:
        """The piece of one fairseq id, e.g. '▁Welt'; specials by their XLM-R names."""
        names = {self.BOS_ID: "<s>", self.PAD_ID: "<pad>", self.EOS_ID: "</s>", self.UNK_ID: "<unk>",
                 self.mask_id: "<mask>"}
        return names.get(token_id) or self._sp.id_to_piece(token_id - 1)

    def decode(self, ids) -> str:
        """Text of fairseq ids; the special tokens are dropped."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise DataError(f"token id {bad[0]} is outside this tokenizer's vocabulary of {self.vocab_size}")
        ids = ids[~np.isin(ids, self.special_ids)]
        return self._sp.decode((ids - 1).tolist())


def _training_sentences(sentences_by_language, probs, count: int, seed: int):
    """`count` sentences: language ~ probs, sentence ~ uniform within it, with replacement."""
    languages = sorted(sentences_by_language)
    p = np.array([probs[lang] for lang in languages], dtype=np.float64)
    rng = np.random.default_rng(seed)
    which = rng.choice(len(languages), size=count, p=p / p.sum())
    sizes = np.array([len(sentences_by_language[lang]) for lang in languages])
    index = (rng.random(count) * sizes[which]).astype(np.int64)
    for lang, i in zip(which.tolist(), index.tolist()):
        yield sentences_by_language[languages[lang]][i]


def train_sentencepiece(sentences_by_language: dict[str, list[str]], probs: dict[str, float], vocab_size: int,
                        *, input_sentence_size: int, character_coverage: float, byte_fallback: bool,
                        seed: int) -> SentencePieceTokenizer:
    """A unigram model of `vocab_size` fairseq ids (so vocab_size - 2 pieces), trained in memory.

    The training text is temperature-sampled like the MLM data (XLM-R, mBERT), so small
    languages get their share of the vocabulary.
    """
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_sentences(sentences_by_language, probs, input_sentence_size, seed),
            model_writer=model, model_type="unigram", vocab_size=vocab_size - 2,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            character_coverage=character_coverage, byte_fallback=byte_fallback,
            input_sentence_size=0, shuffle_input_sentence=False,   # the sample above is the input
            max_sentence_length=16384, num_threads=os.cpu_count(), minloglevel=2)
    except RuntimeError as e:
        raise DataError(_training_error(str(e), vocab_size)) from None
    return SentencePieceTokenizer(model.getvalue())


def _training_error(message: str, vocab_size: int) -> str:
    """SentencePiece's complaint, restated in terms of the config fields that fix it."""
    if match := re.search(r"Vocabulary size too high.*<= (\d+)", message):
        return (f"the tokenizer training text supports at most {int(match.group(1)) + 2} ids, fewer than "
                f"model.vocab_size={vocab_size}; lower --config.model.vocab_size or add text")
    if match := re.search(r"smaller than required_chars\. \d+ vs (\d+)", message):
        return (f"model.vocab_size={vocab_size} is too small: the characters (and byte pieces) of this text "
                f"need at least {int(match.group(1)) + 2}; raise --config.model.vocab_size or lower "
                "--config.data.character_coverage (or set --config.data.byte_fallback=False)")
    return f"SentencePiece training failed: {message}"
