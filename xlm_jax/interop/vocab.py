"""Vocabulary extension for continued pretraining on new languages.

A SentencePiece unigram model is trained on the new text; its pieces that the old
vocabulary lacks are appended to the old model, so every old piece keeps its id and
score and the new language gets whole-word and morpheme pieces instead of being cut
into characters or bytes. Each new embedding row starts as the mean of the rows of the
old tokenization of its piece, so the extended model starts close to the old one.

The fairseq id layout puts `<mask>` last (vocab_size - 1), and transformers'
XLMRobertaTokenizer computes it the same way (len(sp_model) + fairseq offset), so after
appending N pieces `<mask>` moves from old_vocab - 1 to old_vocab - 1 + N: old pieces
keep their ids, the new pieces take old_vocab - 1 ... new_vocab - 2, and the `<mask>`
embedding and bias rows move to the new last index with it.
"""
import io
import os
import re

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from xlm_jax.config import default_config
from xlm_jax.data.text import CorpusText, read_text, tokenizer_text
from xlm_jax.data.tokenizer_report import fertility
from xlm_jax.data.tokenizers import (SentencePieceTokenizer, load_tokenizer, save_tokenizer,
                                     tokenizer_from_hf_directory)
from xlm_jax.errors import ConfigError, DataError
from xlm_jax.models.vocab_padding import resize_vocab_rows, round_up

WORD_START = "\u2581"     # '▁': SentencePiece's whitespace / word-start marker
_NORMAL = sp_pb2.ModelProto.SentencePiece.NORMAL
_UNIGRAM = sp_pb2.TrainerSpec.UNIGRAM
_NORMALIZATION_RULES = ("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity")
# How the old model segments text is copied into the new model's training, so the new
# pieces are of the same kind (e.g. never spanning two scripts or a digit run).
_TRAINER_FLAGS = ("split_by_whitespace", "split_by_unicode_script", "split_by_number", "split_digits",
                  "treat_whitespace_as_suffix", "max_sentencepiece_length")

# A new piece's score is its log-probability under the new model plus this offset. Unigram
# scores are log-probabilities, and Viterbi picks the segmentation with the highest sum, so
# the merged vocabulary is read as the mixture p = lambda * p_old + (1 - lambda) * p_new of
# two unigram LMs over disjoint pieces, with the old scores kept as they are (log p_old; the
# common log lambda shifts every old segmentation alike up to its length). log(1/2): the
# two models weigh the same. Measured (base vocabulary of en/el/uk/vi/ja, +1000 pieces for
# yo/cy/zu/tt): the new language's tokens per word fall 2.2-2.4x, and on the old languages
# they never rise (they fall by up to 5% where new pieces fit shared words, e.g. en with cy),
# though ~27% of old-language sentences segment differently. An offset of -5 halves that
# share but gives back part of the gain (zu 2.96 -> 3.26 tokens per word); ids from the old
# tokenizer mean the same either way.
DEFAULT_SCORE_OFFSET = float(np.log(0.5))


def extend_sentencepiece(tokenizer: SentencePieceTokenizer, sentences: list[str], num_pieces: int, *,
                         character_coverage: float = 0.9995, input_sentence_size: int = 300_000,
                         score_offset: float = DEFAULT_SCORE_OFFSET, seed: int = 0,
                         ) -> tuple[SentencePieceTokenizer, list[str]]:
    """(the extended tokenizer, the pieces appended), from a unigram model of up to
    `num_pieces` pieces trained on `sentences` (fewer when the text cannot support that many).

    Every old piece keeps its id and score; new pieces are appended in the new model's
    order with score = new log-probability + `score_offset` (see DEFAULT_SCORE_OFFSET).
    Only NORMAL pieces are appended: the new model trains without byte fallback, and its
    `<unk>`, `<s>`, `</s>` are the old model's.
    """
    old = tokenizer.proto()
    if old.trainer_spec.model_type != _UNIGRAM:
        raise DataError(f"vocabulary extension needs a unigram SentencePiece model; this one is "
                        f"{sp_pb2.TrainerSpec.ModelType.Name(old.trainer_spec.model_type)}")
    if num_pieces < 1:
        raise DataError(f"num_pieces must be positive, got {num_pieces}")
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise DataError("no text to train new vocabulary pieces on")
    rule = old.normalizer_spec.name if old.normalizer_spec.name in _NORMALIZATION_RULES else "nmt_nfkc"
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, model_type="unigram",
            vocab_size=num_pieces + 3, hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            character_coverage=character_coverage, byte_fallback=False, normalization_rule_name=rule,
            add_dummy_prefix=old.normalizer_spec.add_dummy_prefix,
            remove_extra_whitespaces=old.normalizer_spec.remove_extra_whitespaces,
            input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
            max_sentence_length=16384, num_threads=os.cpu_count(), minloglevel=2,
            **{flag: getattr(old.trainer_spec, flag) for flag in _TRAINER_FLAGS})
    except RuntimeError as e:
        if match := re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e)):
            raise DataError(f"num_pieces={num_pieces} is too small: the characters of the new text alone "
                            f"need {int(match.group(1)) - 3} pieces; raise it (--config.data.extend_vocab_pieces) "
                            "or lower the character coverage (--config.data.character_coverage)") from None
        raise DataError(f"SentencePiece training on the new text failed: {e}") from None
    new = sp_pb2.ModelProto()
    new.ParseFromString(model.getvalue())

    known = {p.piece for p in old.pieces}
    added = []
    for p in new.pieces:
        if p.type == _NORMAL and p.piece not in known:
            old.pieces.add(piece=p.piece, score=p.score + score_offset, type=_NORMAL)
            known.add(p.piece)
            added.append(p.piece)
    old.trainer_spec.vocab_size = len(old.pieces)
    return SentencePieceTokenizer(old.SerializeToString()), added


def _old_tokenization(old_tokenizer: SentencePieceTokenizer, pieces: list[str]) -> list[np.ndarray]:
    """Old fairseq ids covering exactly each piece's surface: '▁abc' as a word start, 'abc' as
    the inside of a word (no dummy '▁' prefix is added, whitespace is kept as written)."""
    proto = old_tokenizer.proto()
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    literal = SentencePieceTokenizer(proto.SerializeToString())
    return literal.encode([piece.replace(WORD_START, " ") for piece in pieces])


def new_row_sources(old_tokenizer: SentencePieceTokenizer,
                    new_tokenizer: SentencePieceTokenizer) -> list[np.ndarray]:
    """For each appended piece (new ids old_vocab - 1 ... new_vocab - 2), the old ids whose
    rows are averaged into its row: the old tokenization of the piece's text, without a lone
    '▁' piece (it would pull every word-initial new piece toward one vector) and without
    `<unk>`, unless nothing else is left. Byte-fallback pieces stay: they are the old model's
    own reading of characters it has no piece for."""
    old, new = old_tokenizer.proto(), new_tokenizer.proto()
    n = len(old.pieces)
    if len(new.pieces) < n or any(a.piece != b.piece for a, b in zip(old.pieces, new.pieces)):
        raise DataError("the new tokenizer does not extend the old one: its first "
                        f"{n} pieces must be the old pieces in the old order")
    pieces = [p.piece for p in new.pieces[n:]]
    dropped = _word_start_ids(old) | {i for i in range(4) if old_tokenizer.id_to_piece(i) == "<unk>"}
    sources = []
    for ids in _old_tokenization(old_tokenizer, pieces):
        kept = np.array([i for i in ids if i not in dropped], dtype=np.int64)
        sources.append(kept if kept.size else np.asarray(ids, np.int64))
    return sources


def _word_start_ids(proto: sp_pb2.ModelProto) -> set[int]:
    """The fairseq id of the lone '▁' piece, if the model has one (SentencePiece id k -> k + 1)."""
    return {k + 1 for k, p in enumerate(proto.pieces) if p.piece == WORD_START and k >= 3}


def extend_params(params: dict, old_tokenizer: SentencePieceTokenizer,
                  new_tokenizer: SentencePieceTokenizer,
                  vocab_pad_multiple: int = default_config().model.vocab_pad_multiple) -> dict:
    """`params` with the word embeddings (tied to the MLM decoder) and the MLM output bias
    grown to the new vocabulary, as host numpy arrays; every other leaf is passed through.

    Rows of old ids are unchanged, except that `<mask>` moves from the old last index to
    the new last one; each new row (and bias entry) is the mean of the old rows of the old
    tokenization of its piece (see `new_row_sources`). Rows past the old vocabulary (a model
    layout's padding) are ignored; the result is the model layout of the new vocabulary,
    zero rows up to a multiple of `vocab_pad_multiple`.
    """
    old_vocab, new_vocab = old_tokenizer.vocab_size, new_tokenizer.vocab_size
    sources = new_row_sources(old_tokenizer, new_tokenizer)

    def grow(table: np.ndarray, name: str) -> np.ndarray:
        table = np.asarray(table)
        if table.shape[0] < old_vocab:
            raise DataError(f"{name} has {table.shape[0]} rows, the old tokenizer {old_vocab} ids")
        grown = np.empty((new_vocab,) + table.shape[1:], table.dtype)
        grown[:old_vocab - 1] = table[:old_vocab - 1]
        grown[new_vocab - 1] = table[old_vocab - 1]            # <mask>
        for row, ids in enumerate(sources, start=old_vocab - 1):
            grown[row] = table[ids].mean(axis=0, dtype=np.float64).astype(table.dtype)
        return grown

    embeddings = params["encoder"]["embeddings"]
    out = {**params, "encoder": {**params["encoder"], "embeddings": {
        **embeddings, "word_embeddings": {**embeddings["word_embeddings"], "embedding": grow(
            embeddings["word_embeddings"]["embedding"], "word_embeddings")}}}}
    if "lm_head" in params:
        out["lm_head"] = {**params["lm_head"], "bias": grow(params["lm_head"]["bias"], "lm_head bias")}
    return resize_vocab_rows(out, round_up(new_vocab, vocab_pad_multiple))


def extension_languages(field: str, corpus_languages) -> list[str]:
    """The languages whose text trains the new pieces: `data.extend_vocab_languages` ("sw",
    "yo,sw"), or every corpus language when it is empty; sorted, each checked against the corpus."""
    languages = sorted({lang.strip() for lang in field.split(",")} - {""})
    if not languages:
        return sorted(corpus_languages)
    unknown = [lang for lang in languages if lang not in corpus_languages]
    if unknown:
        raise ConfigError(f"config field `data.extend_vocab_languages`: got {field!r}, but the corpus has no "
                          f"{', '.join(unknown)}; its languages are {', '.join(sorted(corpus_languages))}")
    return languages


def adopt_vocab_extension(config, source: str, workdir: str, *, resuming: bool, log=print,
                          text: CorpusText | None = None
                          ) -> tuple[SentencePieceTokenizer, SentencePieceTokenizer] | None:
    """For `init_from=hf:DIR` with `data.extend_vocab_pieces > 0`, after `adopt_hf_tokenizer` put
    DIR's tokenizer in the workdir: (DIR's tokenizer, the run's extended one), and
    `config.model.vocab_size` set to the extended size; None without extension.

    The first time, trains the new pieces on the sentences tokenizer training draws from
    (xlm_jax.data.text.tokenizer_text of the corpus `text`, read here in one process when not
    given): about 2 x data.tokenizer_sentences in proportion to q_i, the same whatever the
    process count. Logs fertility before/after per
    language on the held-out text this process holds, and replaces the workdir's tokenizer.
    Later (a resume, or a restart before the first checkpoint) the workdir's extended
    tokenizer is reused as it is: it is what the checkpoint's embedding rows mean.
    """
    count = config.data.extend_vocab_pieces
    old, current = tokenizer_from_hf_directory(source), load_tokenizer(workdir)
    if not (isinstance(old, SentencePieceTokenizer) and isinstance(current, SentencePieceTokenizer)):
        if count:
            raise ConfigError(f"config field `data.extend_vocab_pieces`: vocabulary extension needs a "
                              f"SentencePiece (XLM-R) tokenizer; {source} has a {type(old).__name__}")
        return None
    extended = current.model_proto != old.model_proto
    if not count:
        if extended:
            raise ConfigError(f"config field `data.extend_vocab_pieces`: the tokenizer in {workdir} extends "
                              f"{source}'s; resume this run with the --config.data.extend_vocab_pieces it "
                              "was started with, or use a new workdir")
        return None
    if extended:
        new = current
        new_row_sources(old, new)      # raises unless it extends `old`
        log(f"vocabulary: reusing the run's extended tokenizer ({new.vocab_size:,} ids, "
            f"{new.vocab_size - old.vocab_size:,} added to those of {source})")
    elif resuming:
        raise ConfigError(f"config field `data.extend_vocab_pieces`: the checkpoints in {workdir} were "
                          f"trained with the unextended vocabulary of {source}; set "
                          "--config.data.extend_vocab_pieces=0 to resume them, or use a new workdir")
    else:
        d = config.data
        text = text or read_text(config, log=lambda _: None)
        pools = tokenizer_text(text, text.sentence_probs()[1], d.tokenizer_sentences)   # as tokenizer training: P-independent
        languages = extension_languages(d.extend_vocab_languages, text.languages)
        new, added = extend_sentencepiece(
            old, [line for lang in languages for line in pools[lang]], count,
            character_coverage=d.character_coverage, input_sentence_size=d.tokenizer_sentences,
            seed=config.train.seed)
        trained_on = "the corpus" if languages == sorted(text.languages) else f"{','.join(languages)} text"
        log(f"vocabulary: added {len(added):,} new pieces of a {count:,}-piece model trained on {trained_on} "
            f"to the {old.vocab_size:,} ids of {source} -> {new.vocab_size:,} ids (<mask> moves to "
            f"{new.mask_id})")
        for lang in text.languages:
            held_out = text.own_held_out(lang)
            sample = held_out or pools[lang]
            log(f"vocabulary: {lang} tokens per word {fertility(old, sample):.3f} -> "
                f"{fertility(new, sample):.3f} ({'held-out' if held_out else 'training'} text)")
        save_tokenizer(new, workdir)
    config.model.vocab_size = new.vocab_size
    return old, new
