"""Evaluator sets for the recipes: a fast one for the demo and an XTREME-like one for XLM-R.

Paths point into the offline evaluation data (`$XLM_JAX_EVAL_DATA`, default
../shared/data, relative to where the command runs, made absolute there, so that a run's
config.json names the same files wherever it is evaluated from): Tatoeba, XNLI, UD POS,
and monolingual text. Only `mlm` runs during training; the others run with
--mode=evaluate (all, or `--evals=tatoeba,xnli`) or set `every_steps` to watch them.
"""
import os

import ml_collections

from xlm_jax.evaluation.registry import evaluator_options

DATA = os.path.abspath(os.environ.get("XLM_JAX_EVAL_DATA", "../shared/data"))
DEMO_TATOEBA = "deu,fra,spa,ita,por,nld,rus,pol,tur,ell,ara,cmn"   # 12 languages the demo corpus has
# The built-in corpus's names of the same 12 languages, and English
DEMO_LANGUAGES = "en,de,fr,es,it,pt,nl,ru,pl,tr,el,ar,zh_CN"
# NTREX-128 (news, ../shared/data/ntrex) in the 8 of them it has: its file codes and the pairs' names
NTREX_FILES = {"deu": "deu", "fra": "fra", "spa": "spa", "rus": "rus", "tur": "tur", "ell": "ell", "arb": "arb",
               "zho_CN": "zho-CN"}
XNLI_ALL = ""   # the 15 XNLI languages


def _suite(entries: dict) -> ml_collections.ConfigDict:
    """Complete option sets, so any option can be overridden (`--config.evals.xnli.epochs=1`)."""
    return ml_collections.ConfigDict({name: evaluator_options(**entry) for name, entry in entries.items()})


def demo_suite(data: str = DATA, mlm_every_steps: int = 150) -> ml_collections.ConfigDict:
    """Every task at small scale: minutes on 2 CPU cores (times in the README)."""
    return _suite({
        "mlm": {"kind": "mlm", "every_steps": mlm_every_steps},
        "tatoeba": {"kind": "retrieval", "data": f"{data}/tatoeba", "languages": DEMO_TATOEBA, "max_pairs": 500},
        "mining": {"kind": "retrieval", "mode": "mining", "data": f"{data}/tatoeba", "languages": "deu,fra,rus",
                   "max_pairs": 500, "distractors": 250},
        "xnli": {"kind": "xnli", "data": f"{data}/xnli", "languages": XNLI_ALL, "max_train_examples": 1000,
                 "max_test_examples": 200, "epochs": 2.0, "learning_rate": 1e-4},
        "pos": {"kind": "pos", "train": f"{data}/pos/en_ewt-ud-dev.tsv", "test": f"{data}/pos",
                "max_train_sentences": 1000, "max_test_sentences": 100, "epochs": 3.0},
        "alignment": {"kind": "alignment", "data": f"{data}/tatoeba", "languages": "deu,fra,rus,cmn",
                      "max_pairs": 300},
        "pseudo_perplexity": {"kind": "pseudo_perplexity", "max_sentences": 30,
                              "files": f"en:{data}/mono/en.txt,el:{data}/mono/el.txt,sw:{data}/mono/sw.txt"},
        "data_transfer": {"kind": "data_transfer", "text": f"{data}/mono/sw.txt", "language": "sw",
                          "sizes": "4000,16000", "steps": 60, "seq_len": 64},
    })


def retrieval_suite(data: str = DATA, every_steps: int = 0, heldout_after: int = 5000,
                    max_pairs: int = 500) -> dict:
    """Retrieval on three kinds of text for a model of the built-in corpus's DEMO_LANGUAGES: held-out
    in-domain UI strings (the corpus's pairs past the first `heldout_after`, which a run capped
    there never reads), Tatoeba (everyday sentences) and NTREX (news); accuracy@1 both ways,
    mean-pooled middle layer, each beside random init. Entries for _suite."""
    ntrex = ",".join(f"{data}/ntrex/newstest2019-ref.{f}.txt|{data}/ntrex/newstest2019-src.eng.txt"
                     for f in NTREX_FILES.values())
    common = {"kind": "retrieval", "max_pairs": max_pairs, "every_steps": every_steps}
    return {
        "heldout": {**common, "data": f"builtin-heldout:{heldout_after}", "languages": DEMO_LANGUAGES[3:]},
        "tatoeba": {**common, "data": f"{data}/tatoeba", "languages": DEMO_TATOEBA},
        "ntrex": {**common, "data": ntrex, "languages": ",".join(f"{c}-eng" for c in NTREX_FILES)},
    }


def align_suite(data: str = DATA, every_steps: int = 0) -> ml_collections.ConfigDict:
    """configs/demo_align.py's evaluation: retrieval_suite, at the end of training."""
    return _suite(retrieval_suite(data, every_steps))


def xtreme_suite(data: str = DATA, mlm_every_steps: int = 10_000) -> ml_collections.ConfigDict:
    """XTREME's protocols (../shared/REFERENCES.md): Tatoeba on its 36 languages at the middle
    layer, XNLI fine-tuned on English (lr 2e-5, 5 epochs, seq 128, batch 32; on the English dev
    set offline, or on MultiNLI with --config.evals.xnli.train_tfds=multi_nli), POS on UD."""
    return _suite({
        "mlm": {"kind": "mlm", "every_steps": mlm_every_steps},
        "tatoeba": {"kind": "retrieval", "data": f"{data}/tatoeba"},
        "xnli": {"kind": "xnli", "data": f"{data}/xnli", "learning_rate": 2e-5, "epochs": 5.0},
        "pos": {"kind": "pos", "train": f"{data}/pos/en_ewt-ud-dev.tsv", "test": f"{data}/pos",
                "learning_rate": 2e-5, "epochs": 10.0},
        "alignment": {"kind": "alignment", "data": f"{data}/tatoeba", "languages": "deu,fra,rus,cmn,ara,hin"},
    })
