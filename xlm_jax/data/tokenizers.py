"""Tokenizers: the interface the pipeline needs, SentencePiece (XLM-R), bytes, and the run's tokenizer file.

SentencePiece (unigram as XLM-R, or BPE) uses the XLM-R / fairseq id layout, so XLM-R's
own model loads unchanged: fairseq puts `<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3 first, shifts
every other SentencePiece id by one and appends `<mask>`: XLM-R's 250,000 pieces become
250,002 ids. The byte tokenizer keeps that layout around the 256 UTF-8 byte values (261
ids, as the byte-level models of "Measuring Cross-lingual Transfer in Bytes"). mBERT's
WordPiece lives in wordpiece.py; a run directory holds one of the three files below (with
data.language_id_ranges, also language_ranges.RANGES_FILE beside it).

Why one file: the three tokenizer kinds share one interface, one file naming scheme in the
workdir and one load/save pair; split, each would restate the others' contract.
"""
import io
import itertools
import json
import os
import re
from typing import Protocol

import numpy as np
import sentencepiece as spm
from etils import epath

from xlm_jax.data.language_ranges import RANGES_FILE, LanguageRangeTokenizer, ranges_json, read_ranges
from xlm_jax.data.wordpiece import WordPieceTokenizer
from xlm_jax.errors import CheckpointError, ConfigError, DataError
from xlm_jax.extras import available, install_command
from xlm_jax.jsonfiles import read_json_object
from xlm_jax.workdir import write_atomically

_ENCODE_CHUNK = 65_536   # sentences per sp.encode call: bounds the Python int lists in memory
SENTENCEPIECE_FILE = "tokenizer.model"             # the serialized SentencePiece model
WORDPIECE_FILE = "tokenizer.wordpiece.json"        # {"format", "vocab": [...], BertTokenizer options}
BYTES_FILE = "tokenizer.bytes.json"                # {"format"}: the byte tokenizer has nothing to learn
_WORDPIECE_FORMAT = "xlm_jax.wordpiece/1"
_BYTES_FORMAT = "xlm_jax.bytes/1"
TOKENIZER_FILES = (SENTENCEPIECE_FILE, WORDPIECE_FILE, BYTES_FILE)
_XLMR_SPECIAL_TEXT = re.compile(r"(\s*<mask>|<s>|</s>|<pad>|<unk>)")   # <mask> is lstrip=True in transformers


class Tokenizer(Protocol):
    """What the pipeline, the masking and the api use; encode adds no bos/eos."""
    bos_id: int          # <s> / [CLS]: starts every packed block
    eos_id: int          # </s> / [SEP]: ends every sentence
    pad_id: int
    unk_id: int
    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]   # never masked, dropped by decode
    languages: tuple[str, ...]     # languages with ids of their own (data.language_id_ranges); () = shared ids

    def encode(self, texts: list[str]) -> list[np.ndarray]: ...

    def for_language(self, language: str) -> "Tokenizer":
        """The tokenizer that encodes `language`'s text: itself, unless each language has its own ids."""
        ...

    def decode(self, ids) -> str: ...

    def id_to_piece(self, token_id: int) -> str: ...


class _FairseqLayout:
    """The special ids SentencePiece and byte tokenizers share (XLM-R / fairseq): `<s>`=0
    `<pad>`=1 `</s>`=2 `<unk>`=3 first, `<mask>` last; and, as transformers' XLMRobertaTokenizer,
    specials written in a text become those tokens (`<mask>` swallowing the whitespace before it).
    Subclasses give `vocab_size` and `_encode_plain` (texts without specials -> ids)."""
    bos_id, pad_id, eos_id, unk_id = 0, 1, 2, 3
    languages: tuple[str, ...] = ()

    def for_language(self, language: str) -> "_FairseqLayout":
        """Every language shares these ids."""
        del language
        return self

    @property
    def mask_id(self) -> int:
        return self.vocab_size - 1

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.bos_id, self.pad_id, self.eos_id, self.unk_id, self.mask_id)

    @property
    def _special_names(self) -> dict[int, str]:
        return {self.bos_id: "<s>", self.pad_id: "<pad>", self.eos_id: "</s>", self.unk_id: "<unk>",
                self.mask_id: "<mask>"}

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """int32 ids per text (no `<s>`/`</s>` added); text between written specials is encoded plainly."""
        texts = list(texts)
        out = self._encode_plain(texts)
        for i, text in enumerate(texts):
            if "<" in text and len(parts := _XLMR_SPECIAL_TEXT.split(text)) > 1:
                special = {name: token_id for token_id, name in self._special_names.items()}
                ids = [[special[part.lstrip()]] if j % 2 else self._encode_plain([part])[0]
                       for j, part in enumerate(parts) if part]
                out[i] = np.concatenate(ids).astype(np.int32)
        return out

    def _checked(self, ids) -> np.ndarray:
        """ids as a flat int64 array; DataError for one outside the vocabulary."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise DataError(f"token id {bad[0]} is outside this tokenizer's vocabulary of {self.vocab_size}")
        return ids


class SentencePieceTokenizer(_FairseqLayout):
    """A SentencePiece model that speaks fairseq ids: every SentencePiece id shifted by one."""

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
        self._to_fairseq[:3] = (self.unk_id, self.bos_id, self.eos_id)

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
        write_atomically(path, self.model_proto)

    def proto(self):
        """The model as a (fresh, editable) sentencepiece_model_pb2.ModelProto."""
        from sentencepiece import sentencepiece_model_pb2
        return sentencepiece_model_pb2.ModelProto.FromString(self.model_proto)

    @property
    def byte_fallback(self) -> bool:
        """Whether characters outside the vocabulary become byte pieces (else `<unk>`)."""
        return self.proto().trainer_spec.byte_fallback

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size() + 2

    def _encode_plain(self, texts: list[str]) -> list[np.ndarray]:
        """Encoded on all cores and mapped to fairseq ids in one numpy gather."""
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
        return self._special_names.get(token_id) or self._sp.id_to_piece(token_id - 1)

    def decode(self, ids) -> str:
        """Text of fairseq ids; the special tokens are dropped."""
        ids = self._checked(ids)
        ids = ids[~np.isin(ids, self.special_ids)]
        return self._sp.decode((ids - 1).tolist())


class ByteTokenizer(_FairseqLayout):
    """UTF-8 bytes in the fairseq layout: `<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3, byte b = b + 4, `<mask>`=260.

    Every text encodes, so `<unk>` never appears; specials written in a text are those tokens,
    as in SentencePieceTokenizer (so `<mask>` works in api.predict_masked).
    """
    OFFSET = 4           # id of byte 0
    vocab_size = OFFSET + 256 + 1

    def _encode_plain(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + self.OFFSET
                for text in texts]

    def decode(self, ids) -> str:
        """Text of ids; specials are dropped and broken UTF-8 becomes U+FFFD."""
        ids = self._checked(ids)
        ids = ids[(ids >= self.OFFSET) & (ids < self.mask_id)]
        return (ids - self.OFFSET).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def id_to_piece(self, token_id: int) -> str:
        """'<0xE2>' for a byte (as SentencePiece's byte pieces), specials by their XLM-R names."""
        self._checked(token_id)
        return self._special_names.get(token_id) or f"<0x{token_id - self.OFFSET:02X}>"


def tokenizer_kind(tokenizer: Tokenizer) -> str:
    """"unigram", "bpe" (SentencePiece), "bytes" or "wordpiece": what `data.tokenizer` names
    (of the base, for language id ranges)."""
    if isinstance(tokenizer, LanguageRangeTokenizer):
        return tokenizer_kind(tokenizer.base)
    if isinstance(tokenizer, ByteTokenizer):
        return "bytes"
    if isinstance(tokenizer, WordPieceTokenizer):
        return "wordpiece"
    from sentencepiece import sentencepiece_model_pb2
    spec = tokenizer.proto().trainer_spec
    return sentencepiece_model_pb2.TrainerSpec.ModelType.Name(spec.model_type).lower()


def _tokenizer_files(workdir) -> list[epath.Path]:
    return [p for p in (epath.Path(workdir) / name for name in TOKENIZER_FILES) if p.exists()]


def tokenizer_path(workdir) -> epath.Path | None:
    """The run directory's tokenizer file (any kind), None when it has none."""
    files = _tokenizer_files(workdir)
    return files[0] if files else None


def tokenizer_exists(workdir) -> bool:
    """Whether the run directory holds a tokenizer (any kind)."""
    return bool(_tokenizer_files(workdir))


def save_tokenizer(tokenizer: Tokenizer, workdir) -> epath.Path:
    """Writes the run's tokenizer file atomically: tokenizer.model, .wordpiece.json or .bytes.json.

    Language id ranges write tokenizer.ranges.json, then their base's file: a run killed in
    between has no tokenizer file yet, so it makes the tokenizer again instead of loading a
    base without its ranges."""
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if isinstance(tokenizer, LanguageRangeTokenizer):
        write_atomically(workdir / RANGES_FILE, ranges_json(tokenizer, tokenizer_kind(tokenizer.base)))
        return save_tokenizer(tokenizer.base, workdir)
    if isinstance(tokenizer, SentencePieceTokenizer):
        path, data = workdir / SENTENCEPIECE_FILE, tokenizer.model_proto
    elif isinstance(tokenizer, WordPieceTokenizer):
        path = workdir / WORDPIECE_FILE
        data = json.dumps({"format": _WORDPIECE_FORMAT, **tokenizer.options, "vocab": tokenizer.vocab},
                          ensure_ascii=False).encode("utf-8")
    elif isinstance(tokenizer, ByteTokenizer):
        path, data = workdir / BYTES_FILE, json.dumps({"format": _BYTES_FORMAT}).encode("utf-8")
    else:
        raise TypeError(f"cannot save a {type(tokenizer).__name__}; xlm_jax saves SentencePieceTokenizer, "
                        "WordPieceTokenizer and ByteTokenizer")
    for other in _tokenizer_files(workdir):
        if other.name != path.name:
            raise DataError(f"{other} already holds this run's tokenizer; use a new workdir for another one")
    write_atomically(path, data)
    return path


def load_tokenizer(workdir) -> Tokenizer:
    """The run's tokenizer: DataError naming the file when it is missing, ambiguous or damaged."""
    tokenizer = _load_tokenizer_file(workdir)
    ranges = epath.Path(workdir) / RANGES_FILE
    return read_ranges(ranges, tokenizer, tokenizer_kind(tokenizer)) if ranges.exists() else tokenizer


def _load_tokenizer_file(workdir) -> Tokenizer:
    """The tokenizer of the run directory's one tokenizer file (the base, for language id ranges)."""
    files = _tokenizer_files(workdir)
    if not files:
        raise DataError(f"no tokenizer in {workdir}: expected {epath.Path(workdir) / SENTENCEPIECE_FILE} "
                        f"(SentencePiece), {WORDPIECE_FILE} (WordPiece) or {BYTES_FILE} (bytes)")
    if len(files) > 1:
        raise DataError(f"{workdir} holds two tokenizers, {files[0].name} and {files[1].name}; "
                        "delete the one the run did not use")
    path = files[0]
    if path.name == SENTENCEPIECE_FILE:
        return SentencePieceTokenizer.load(path)
    expected = _BYTES_FORMAT if path.name == BYTES_FILE else _WORDPIECE_FORMAT
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(state, dict) or state.get("format") != expected:
            raise ValueError(f"no \"format\": \"{expected}\"")
        if path.name == BYTES_FILE:
            return ByteTokenizer()
        return WordPieceTokenizer(state["vocab"], do_lower_case=state["do_lower_case"],
                                  strip_accents=state["strip_accents"],
                                  tokenize_chinese_chars=state["tokenize_chinese_chars"])
    except (ValueError, KeyError, TypeError, DataError) as e:   # JSON and UTF-8 errors are ValueErrors
        kind = "byte" if path.name == BYTES_FILE else "WordPiece"
        raise DataError(f"{path} is not an xlm_jax {kind} tokenizer ({e}); delete it to train a new "
                        "tokenizer, or write it with save_tokenizer") from None


# --- transformers tokenizer files ------------------------------------------------------------

HF_SENTENCEPIECE_FILE = "sentencepiece.bpe.model"   # XLM-R: XLMRobertaTokenizer(Fast)
HF_VOCAB_FILE = "vocab.txt"                          # BERT / mBERT: BertTokenizer(Fast)
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
_XLMR_SPECIALS = dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                      pad_token="<pad>", mask_token="<mask>")
_BERT_SPECIALS = dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                      mask_token="[MASK]")
_BERT_OPTIONS = dict(do_lower_case=True, strip_accents=None, tokenize_chinese_chars=True)   # BertTokenizer's


def _read_hf_tokenizer_config(directory: epath.Path) -> dict:
    path = directory / HF_TOKENIZER_CONFIG
    if not path.exists():
        return {}
    return read_json_object(path, "fix it or remove it (the tokenizer's defaults are then used)", DataError)


def tokenizer_from_hf_directory(directory) -> Tokenizer:
    """The tokenizer of a transformers model directory, giving the ids transformers gives.

    XLM-R: sentencepiece.bpe.model (fairseq layout, <mask> last). BERT / mBERT: vocab.txt with
    tokenizer_config.json's do_lower_case, strip_accents and tokenize_chinese_chars (defaults as
    BertTokenizer's: lowercasing on, so a cased model's directory must say do_lower_case=false).
    """
    directory = epath.Path(directory)
    if (directory / HF_SENTENCEPIECE_FILE).exists():
        return SentencePieceTokenizer.load(directory / HF_SENTENCEPIECE_FILE)
    vocab = directory / HF_VOCAB_FILE
    if not vocab.exists():
        raise CheckpointError(f"{directory} has neither {HF_SENTENCEPIECE_FILE} (XLM-R SentencePiece) nor "
                              f"{HF_VOCAB_FILE} (BERT WordPiece): copy the model's tokenizer files beside its "
                              "weights (a tokenizer.json alone is not read)")
    config = _read_hf_tokenizer_config(directory)
    if not config.get("do_basic_tokenize", True):
        raise DataError(f"{directory / HF_TOKENIZER_CONFIG}: do_basic_tokenize=false is not supported")
    names = {key: config[key] if isinstance(config.get(key), str) else (config.get(key) or {}).get("content")
             for key in _BERT_SPECIALS if key in config}
    odd = {key: name for key, name in names.items() if name != _BERT_SPECIALS[key]}
    if odd:
        raise DataError(f"{directory / HF_TOKENIZER_CONFIG}: special tokens {odd} differ from BERT's "
                        f"{_BERT_SPECIALS}, which xlm_jax's WordPieceTokenizer uses")
    options = {key: config.get(key, default) for key, default in _BERT_OPTIONS.items()}
    return WordPieceTokenizer.from_vocab_file(vocab, **options)


def _write_byte_fallback_tokenizer_json(directory: epath.Path, log) -> None:
    """tokenizer.json for XLMRobertaTokenizerFast: transformers' conversion plus byte fallback
    (ids then equal the slow tokenizer's, checked in tests/interop/test_tokenizer_parity.py)."""
    if not available("transformers"):   # the converter is transformers'; the slow tokenizer still matches
        log(f"left out tokenizer.json: writing it needs transformers ({install_command('transformers')}). "
            "Without it, AutoTokenizer's fast XLM-R tokenizer drops byte fallback (characters outside the "
            "vocabulary become <unk>); load with use_fast=False for xlm_jax's ids, or export again with "
            "transformers installed")
        return
    from transformers import XLMRobertaTokenizerFast
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*byte fallback.*")
        fast = XLMRobertaTokenizerFast.from_pretrained(os.fspath(directory))   # as AutoTokenizer converts
    state = json.loads(fast.backend_tokenizer.to_str())
    state["model"]["byte_fallback"] = True
    state["decoder"] = {"type": "Sequence", "decoders": [   # as transformers' Llama converter
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    write_atomically(directory / "tokenizer.json", json.dumps(state, ensure_ascii=False).encode("utf-8"))


def write_hf_tokenizer_files(tokenizer: Tokenizer, directory, *, model_max_length: int | None = None,
                             log=print) -> None:
    """The files `transformers.AutoTokenizer.from_pretrained(directory)` loads into this tokenizer.

    SentencePiece: sentencepiece.bpe.model for XLMRobertaTokenizer; WordPiece: vocab.txt for
    BertTokenizer, with its options. Plus tokenizer_config.json and special_tokens_map.json.
    The fast tokenizer is converted from these by transformers when loaded, except for a
    SentencePiece model with byte fallback: transformers' XLM-R converter drops byte fallback
    (unseen characters would become <unk>), so a tokenizer.json with it is written too.
    """
    if isinstance(tokenizer, LanguageRangeTokenizer):
        raise ConfigError("config field `data.language_id_ranges`: this run's tokenizer gives each language its "
                          f"own id range ({', '.join(tokenizer.languages)}), and transformers has no such "
                          "tokenizer, so the model cannot be exported with one; export a run trained with "
                          "data.language_id_ranges=False")
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(tokenizer, SentencePieceTokenizer):
        write_atomically(directory / HF_SENTENCEPIECE_FILE, tokenizer.model_proto)
        specials, config = _XLMR_SPECIALS, {"tokenizer_class": "XLMRobertaTokenizer"}
    elif isinstance(tokenizer, WordPieceTokenizer):
        broken = [token for token in tokenizer.vocab if "\n" in token or "\r" in token]
        if broken:
            raise DataError(f"WordPiece token {broken[0]!r} cannot be written as one line of {HF_VOCAB_FILE}")
        write_atomically(directory / HF_VOCAB_FILE, "".join(f"{token}\n" for token in tokenizer.vocab).encode("utf-8"))
        specials, config = _BERT_SPECIALS, {"tokenizer_class": "BertTokenizer", **tokenizer.options}
    else:
        raise TypeError(f"cannot export a {type(tokenizer).__name__}; xlm_jax exports SentencePieceTokenizer "
                        "and WordPieceTokenizer")
    config.update(specials)
    if model_max_length is not None:
        config["model_max_length"] = int(model_max_length)
    for name, content in ((HF_TOKENIZER_CONFIG, config), ("special_tokens_map.json", specials)):
        write_atomically(directory / name, json.dumps(content, indent=2, ensure_ascii=False).encode("utf-8"))
    if isinstance(tokenizer, SentencePieceTokenizer) and tokenizer.byte_fallback:
        _write_byte_fallback_tokenizer_json(directory, log)


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
                        seed: int, model_type: str = "unigram") -> SentencePieceTokenizer:
    """A unigram or BPE model of `vocab_size` fairseq ids (so vocab_size - 2 pieces), trained in memory.

    The training text is `input_sentence_size` sentences temperature-sampled like the MLM data
    (XLM-R, mBERT), so small languages get their share of the vocabulary and a huge corpus
    trains in bounded memory and time.
    """
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be \"unigram\" or \"bpe\", not {model_type!r}")
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_sentences(sentences_by_language, probs, input_sentence_size, seed),
            model_writer=model, model_type=model_type, vocab_size=vocab_size - 2,
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
