"""POS and NER: the readers, first-subword labels, seqeval-style span F1, the errors, and transfer.

Real data: UD English-EWT dev and the PUD test files (../shared/data/pos). NER has no
public data in the shared set, so its end-to-end test tags proper-noun spans read off
the same UD files (a maximal run of PROPN words = one NAME entity): real sentences,
real span structure, labels derived mechanically.
"""
import numpy as np
import pytest

from xlm_jax.data.tokenizers import ByteTokenizer
from xlm_jax.errors import ConfigError, DataError
from xlm_jax.evaluation import tagging
from xlm_jax.evaluation.encoding import make_context
from xlm_jax.evaluation.registry import evaluator_options
from xlm_jax.evaluation.finetune import IGNORE

EWT_DEV = "pos/en_ewt-ud-dev.tsv"


def pos_evaluator(shared_data, **options):
    defaults = {"train": str(shared_data / EWT_DEV), "test": str(shared_data / "pos")}
    return tagging.PartOfSpeech("pos", evaluator_options("pos", **{**defaults, **options}))


# --- readers ------------------------------------------------------------------------------
def test_reads_the_word_tag_files_of_the_shared_data(shared_data):
    path = shared_data / "pos" / "en_pud-ud-test.tsv"
    sentences = tagging.read_tagged(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(sentences) == 1000                                   # PUD: 1000 sentences per language
    assert sum(len(s.words) for s in sentences) == sum(1 for line in lines if line.strip())
    first = sentences[0]
    assert (first.words[0], first.tags[0], first.lines[0]) == tuple(lines[0].split("\t")) + (1,)
    assert {t for s in sentences for t in s.tags} <= {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN",
                                                      "NUM", "PART", "PRON", "PROPN", "PUNCT", "SCONJ", "SYM",
                                                      "VERB", "X"}


CONLLU = """# sent_id = 1
# text = Vámonos al mar.
1-2\tVámonos\t_\t_\t_\t_\t_\t_\t_\t_
1\tVamos\tir\tVERB\t_\t_\t0\troot\t_\t_
2\tnos\tnosotros\tPRON\t_\t_\t1\tobj\t_\t_
3-4\tal\t_\t_\t_\t_\t_\t_\t_\t_
3\ta\ta\tADP\t_\t_\t5\tcase\t_\t_
4\tel\tel\tDET\t_\t_\t5\tdet\t_\t_
5\tmar\tmar\tNOUN\t_\t_\t1\tobl\t_\t_
5.1\tfue\tir\tVERB\t_\t_\t_\t_\t_\t_
6\t.\t.\tPUNCT\t_\t_\t1\tpunct\t_\t_

# sent_id = 2
1\tSí\tsí\tINTJ\t_\t_\t0\troot\t_\t_
"""


def test_reads_conllu_syntactic_words_skipping_comments_ranges_and_empty_nodes(tmp_path):
    path = tmp_path / "es.conllu"
    path.write_text(CONLLU, encoding="utf-8")
    first, second = tagging.read_tagged(path)
    assert first.words == ["Vamos", "nos", "a", "el", "mar", "."]
    assert first.tags == ["VERB", "PRON", "ADP", "DET", "NOUN", "PUNCT"]
    assert first.lines == [4, 5, 7, 8, 9, 11]
    assert (second.words, second.tags) == (["Sí"], ["INTJ"])


def test_reads_conll_columns_with_the_word_first_and_the_tag_last(tmp_path):
    path = tmp_path / "en.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter\tB-PER\n",
                    encoding="utf-8")
    first, second = tagging.read_tagged(path)
    assert (first.words, first.tags, first.lines) == (["EU", "rejects"], ["B-ORG", "O"], [3, 4])
    assert (second.words, second.tags) == (["Peter"], ["B-PER"])


@pytest.mark.parametrize("name, text, message", [
    ("a.tsv", "The\tDET\ncat\n", r"a.tsv:2: expected `word<TAB>tag`"),
    ("b.conllu", "# c\n1\tThe\tthe\tDET\t_\t_\t0\n", r"b.conllu:2: a CoNLL-U word line has 10 tab-separated"),
    ("c.conllu", "# only a comment\n\n", r"c.conllu: no tagged words"),
    ("d.tsv", "", r"d.tsv: tagged file is empty"),
    ("e.tsv", "The\tDET\ncat\tNOUN\tcols\tx\n", r"e.tsv:2: 4 tab-separated columns, but a `word<TAB>tag` row has 2 "
                                                  r"\(the tag would be 'x'; CoNLL-2003's columns are separated by spaces\)"),
], ids=["one-column", "conllu-columns", "no-words", "empty", "extra-columns"])
def test_reader_errors_name_the_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        tagging.read_tagged(tmp_path / name)


# --- words, pieces, labels ----------------------------------------------------------------
def test_byte_tokenizer_labels_the_first_byte_of_each_word_of_the_running_text():
    tokenizer = ByteTokenizer()
    pieces = tagging.word_pieces(tokenizer, ["Hi", "wörld", "."])
    [chunk] = tagging.chunks_of(tokenizer, pieces, max_len=64)
    assert tokenizer.decode(chunk.ids) == "Hi wörld ."               # the words joined by spaces
    assert [len(p) for p in pieces] == [2, 6, 1]                      # ö is two bytes
    np.testing.assert_array_equal(chunk.firsts, [1, 4, 11])
    assert [tokenizer.decode(chunk.ids[f:f + 1]) for f in chunk.firsts] == ["H", "w", "."]
    labels = tagging.token_labels(chunk, np.array([5, 6, 7]))
    assert labels.tolist() == [IGNORE, 5, IGNORE, IGNORE, 6] + [IGNORE] * 6 + [7, IGNORE]


def test_long_sentences_are_split_into_runs_of_whole_words():
    tokenizer = ByteTokenizer()
    words = ["ab", "cdef", "g", "hijklmnopq"]
    chunks = tagging.chunks_of(tokenizer, tagging.word_pieces(tokenizer, words), max_len=8)
    assert [tokenizer.decode(c.ids) for c in chunks] == ["ab", "cdef g", "hijklm"]   # the last word cut to 6
    assert [c.start for c in chunks] == [0, 1, 3]
    assert all(len(c.ids) <= 8 and c.ids[0] == tokenizer.bos_id and c.ids[-1] == tokenizer.eos_id
               for c in chunks)
    label_ids = np.array([10, 11, 12, 13])
    labeled = [tagging.token_labels(c, label_ids) for c in chunks]
    assert [lab[lab != IGNORE].tolist() for lab in labeled] == [[10], [11, 12], [13]]   # every word once


class FirstPieceTuner:
    """Stands in for a FineTune: the 'logits' at each token one-hot its id mod 3, so the tag a
    word gets tells which token it was read from."""
    subject = type("S", (), {"tokenizer": ByteTokenizer()})

    @staticmethod
    def predict(params, ids, language_ids=None):
        return [np.eye(3)[np.asarray(x) % 3] for x in ids]


def test_predicted_tags_come_from_each_words_first_piece_across_chunks():
    words = ["ab", "cdef", "g", "hijklmnopq", "r"]
    sentence = tagging.Sentence(words, ["X"] * 5, list(range(5)))
    predicted = tagging.predicted_tags(FirstPieceTuner, None, [sentence, sentence], ["A", "B", "C"], max_len=8)
    first_bytes = [ByteTokenizer().encode([w])[0][0] for w in words]
    assert predicted == [["ABC"[b % 3] for b in first_bytes]] * 2


def test_sentencepiece_words_are_tokenized_alone_and_labeled_on_their_first_piece(pretrained_subject, shared_data):
    tokenizer = pretrained_subject.tokenizer
    sentences = tagging.read_tagged(shared_data / "pos" / "de_pud-ud-test.tsv")[:20]
    split_words = 0
    for chunks, sentence in zip(tagging.sentence_chunks(tokenizer, sentences, 1024), sentences):
        [chunk] = chunks
        ends = list(chunk.firsts[1:]) + [len(chunk.ids) - 1]
        for word, first, end in zip(sentence.words, chunk.firsts, ends):
            alone = tokenizer.encode([word])[0]
            np.testing.assert_array_equal(chunk.ids[first:end], alone)  # exactly the word's own pieces
            assert tokenizer.id_to_piece(int(chunk.ids[first])).startswith("▁")
            assert tokenizer.decode(chunk.ids[first:end]) == word
            split_words += len(alone) > 1
        labels = tagging.token_labels(chunk, np.arange(len(sentence.words)))
        assert np.flatnonzero(labels != IGNORE).tolist() == chunk.firsts.tolist()
    assert split_words > 50                                            # plenty of words of several pieces
    long = tagging.sentence_chunks(tokenizer, sentences, 32)
    assert max(len(c) for c in long) > 1 and all(len(c.ids) <= 32 for cs in long for c in cs)
    assert [sum(len(c.firsts) for c in cs) for cs in long] == [len(s.words) for s in sentences]


# --- NER spans ----------------------------------------------------------------------------
@pytest.mark.parametrize("tags, spans", [
    (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 1), ("LOC", 3, 3)}),
    (["B-PER", "B-PER", "I-PER"], {("PER", 0, 0), ("PER", 1, 2)}),
    (["O", "I-PER", "I-PER", "O"], {("PER", 1, 2)}),                   # I- without B- starts an entity
    (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 0), ("LOC", 1, 2)}),     # a type change starts another
    (["I-ORG"], {("ORG", 0, 0)}),
    (["O", "O"], set()),
])
def test_entity_spans_read_iob2_as_seqeval_default_mode(tags, spans):
    assert tagging.entity_spans(tags) == spans


def test_span_f1_against_hand_counts():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-PER"], ["B-ORG", "O", "O"]]
    # gold: PER(0,1) LOC(3,3) | ORG(0,1); predicted: PER(0,1) PER(3,3) | ORG(0,0): 1 of 3 right.
    scores = tagging.span_scores(gold, predicted)
    assert scores["precision"] == pytest.approx(1 / 3) and scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(1 / 3)
    scores = tagging.span_scores([["B-PER", "O"], ["B-LOC"]], [["B-PER", "B-MISC"], ["O"]])
    # 1 right of 2 predicted (precision 1/2) and of 2 gold (recall 1/2).
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.5, 0.5, 0.5)
    assert tagging.span_scores([["B-PER"]], [["O"]]) == {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    assert tagging.span_scores([["O"]], [["O"]])["f1"] == 0.0


def test_majority_tag_and_accuracy():
    sentences = [tagging.Sentence(["a", "b", "c"], ["NOUN", "VERB", "NOUN"], [1, 2, 3]),
                 tagging.Sentence(["d"], ["VERB"], [5])]
    assert tagging.majority_tag(sentences) == "NOUN"                   # a 2-2 tie: alphabetically first
    assert tagging.tag_accuracy([["NOUN", "VERB"], ["X"]], [["NOUN", "NOUN"], ["Y"]]) == {"accuracy": 1 / 3}


# --- configuration and data errors, found by check() -------------------------------------
def test_check_finds_test_files_and_reports_bad_inputs(shared_data, tmp_path):
    evaluator = pos_evaluator(shared_data, languages="en,de")
    assert evaluator.test_files() == {"en": str(shared_data / "pos" / "en_pud-ud-test.tsv"),
                                      "de": str(shared_data / "pos" / "de_pud-ud-test.tsv")}
    assert len(pos_evaluator(shared_data).test_files()) == 12          # every PUD language

    bad_test = tmp_path / "xx.tsv"
    bad_test.write_text("The\tDET\ncat\tKITTEN\n", encoding="utf-8")
    cases = [
        (ConfigError, "evals.pos.test_glob.*matches two files of 'en'", {"test_glob": "*-ud-test.*"}),
        (ConfigError, "evals.pos.languages.*no test file for xx", {"languages": "de,xx"}),
        (ConfigError, "evals.pos.test.*is not \"lang:path\"", {"test": "de_pud-ud-test.tsv"}),
        (ConfigError, "evals.pos.test.*'en' is listed twice", {"test": "en:a.tsv,en:b.tsv"}),
        (ConfigError, "evals.pos.train.*is empty", {"train": ""}),
        (DataError, r"xx.tsv:2: tag 'KITTEN' is not in the training file's label set", {"test": f"xx:{bad_test}"}),
        (DataError, "missing.tsv: tagged file not found", {"test": f"en:{tmp_path / 'missing.tsv'}"}),
        (DataError, "no file matches evals.pos.test_glob", {"test": str(tmp_path / "empty_dir")}),
    ]
    (tmp_path / "empty_dir").mkdir()
    for error, message, options in cases:
        with pytest.raises(error, match=message):
            pos_evaluator(shared_data, **options).check()


def test_ner_training_tags_must_be_iob2(shared_data, tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("Peter\tB-PER\nlives\tO\n\nParis\tLOC\n", encoding="utf-8")
    evaluator = tagging.NamedEntities("ner", evaluator_options("ner", train=str(train), test=f"en:{train}"))
    with pytest.raises(DataError, match=r"train.tsv:4: NER tag 'LOC' is not IOB2"):
        evaluator.check()


# --- transfer, end to end -----------------------------------------------------------------
def fine_tune_options(**options):
    """A budget the tiny pretrained model learns POS with in seconds: 60 updates of 16 chunks of <= 64 tokens."""
    return {"max_train_sentences": 300, "max_test_sentences": 100, "steps": 60, "batch_size": 16,
            "learning_rate": 2e-3, "seq_len": 64, **options}


def test_pos_fine_tuned_on_english_beats_the_majority_tag(pretrained_subject, shared_data):
    evaluator = pos_evaluator(shared_data, languages="en,de", **fine_tune_options())
    evaluator.check()
    lines = []
    result = evaluator.evaluate(make_context(pretrained_subject, log=lines.append))
    english, majority = result.per_language["en"]["accuracy"], result.majority["en"]["accuracy"]
    print(f"pos: en {english:.3f}, de {result.per_language['de']['accuracy']:.3f}, "
          f"majority (NOUN) en {majority:.3f}, train accuracy {result.details['train_accuracy']:.3f}")
    assert result.details["majority_tag"] == "NOUN"
    assert english > majority + 0.2
    assert result.details["train_accuracy"] > majority + 0.2
    assert result.source_language == "en" and set(result.per_language) == {"en", "de"}
    assert result.summary["transfer_gap"] == pytest.approx(english - result.per_language["de"]["accuracy"])
    assert result.summary["accuracy_mean"] == pytest.approx((english + result.per_language["de"]["accuracy"]) / 2)
    assert result.data_files == [str(shared_data / EWT_DEV), str(shared_data / "pos" / "en_pud-ud-test.tsv"),
                                 str(shared_data / "pos" / "de_pud-ud-test.tsv")]
    assert result.details["test_sentences"] == {"en": 100, "de": 100}
    assert any(line.startswith("pos: fine-tuning step 60/60, loss") for line in lines)


def write_name_spans(sentences, path):
    """NER from UD: every maximal run of PROPN words is one NAME entity (B-NAME I-NAME ...)."""
    rows = []
    for s in sentences:
        for i, (word, tag) in enumerate(zip(s.words, s.tags)):
            inside = tag == "PROPN" and i > 0 and s.tags[i - 1] == "PROPN"
            rows.append(f"{word}\t{'O' if tag != 'PROPN' else 'I-NAME' if inside else 'B-NAME'}")
        rows.append("")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_ner_fine_tuned_on_english_finds_name_spans(pretrained_subject, shared_data, tmp_path):
    write_name_spans(tagging.read_tagged(shared_data / EWT_DEV)[:300], tmp_path / "train.tsv")
    write_name_spans(tagging.read_tagged(shared_data / "pos" / "en_pud-ud-test.tsv")[:100], tmp_path / "en.tsv")
    options = fine_tune_options(train=str(tmp_path / "train.tsv"), test=f"en:{tmp_path / 'en.tsv'}")
    evaluator = tagging.NamedEntities("ner", evaluator_options("ner", **options))
    evaluator.check()
    result = evaluator.evaluate(make_context(pretrained_subject, log=lambda _: None))
    scores = result.per_language["en"]
    print(f"ner (PROPN spans): en f1 {scores['f1']:.3f} (p {scores['precision']:.3f}, r {scores['recall']:.3f}), "
          f"majority {result.majority['en']['f1']:.3f}")
    assert result.details["labels"] == ["B-NAME", "I-NAME", "O"]
    assert result.majority["en"] == {"f1": 0.0, "precision": 0.0, "recall": 0.0}   # all "O": no entity found
    assert scores["f1"] > 0.2
    assert result.summary["f1_mean"] == scores["f1"] and "transfer_gap" not in result.summary
