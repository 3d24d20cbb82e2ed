"""Study: which pretraining objective aligns languages? The demo model trained four ways, on one budget.

  python -m xlm_jax.main --mode=study --config=configs/studies/objectives.py:small --workdir=runs/study_objectives

Arms (configs/demo*.py: the same model, tokenizer settings, steps and 32 sequences of
data.seq_len tokens per update): MLM; MLM + TLM; MLM + TLM + XLCo (InfoXLM's recipe); MLM +
language-adversarial. They train on the built-in corpus in the 13 languages of the demo
suite's Tatoeba evaluation (English and its 12 partners: `data.languages`, so that the
corpus's 12 en-xx pair sets carry the pairs instead of 172). Each is evaluated by retrieval
(accuracy@1) on Tatoeba with XTREME's protocol (mean-pooled middle layer) and with XLCo's own
vector (the `<s>` state of the layer it trains), and on held-out pairs of the corpus itself
({study}/heldout_pairs: en-xx UI strings the arms never train on: beyond the demo's
5,000-sentence cap, and neither side among the trained ones) with both poolings, each beside
the random-init baseline (the same architecture and tokenizer, untrained).
"""
import os

from xlm_jax.studies.study import Arm, Study, study_config

LANGUAGES = "en,de,fr,es,it,pt,nl,ru,pl,tr,el,ar,zh_CN"   # the corpus's names of the demo's Tatoeba languages
HELDOUT_PAIRS = 500     # per language
CAP = 5000              # configs/demo.py's data.max_sentences_per_language: all a run reads
XLCO_LAYER = "2"        # XLCo's layer in the demo model: 2 of 3 (configs/demo_xlco.py)
PRESETS = {"small": {"steps": 1000}, "paper": {"steps": 200_000}}


def heldout_pairs(study_dir: str) -> None:
    """{study}/heldout_pairs/en-<xx>.tsv: up to HELDOUT_PAIRS of the built-in corpus's en-xx pairs
    past the first CAP whose sides are not among those."""
    directory = os.path.join(study_dir, "heldout_pairs")
    if os.path.exists(os.path.join(directory, "done")):
        return
    from xlm_jax.data.gettext_corpus import read_gettext_catalogs
    corpus = read_gettext_catalogs()
    os.makedirs(directory, exist_ok=True)
    trained = {line for lang in LANGUAGES.split(",") for line in corpus.mono.get(lang, [])[:CAP]}
    for lang in LANGUAGES.split(",")[1:]:
        unseen = [(en, xx) for en, xx in corpus.parallel[("en", lang)][CAP:]
                  if en not in trained and xx not in trained and "\t" not in en + xx]
        with open(os.path.join(directory, f"en-{lang}.tsv"), "w", encoding="utf-8") as f:
            f.writelines(f"{en}\t{xx}\n" for en, xx in unseen[:HELDOUT_PAIRS])
    open(os.path.join(directory, "done"), "w").close()


def study(preset: str) -> Study:
    steps = PRESETS[preset]["steps"]
    heldout = ",".join(f"{{study}}/heldout_pairs/en-{lang}.tsv" for lang in LANGUAGES.split(",")[1:])
    tatoeba = {"kind": "retrieval", "data": "{data}/tatoeba", "languages": "deu,fra,spa,ita,por,nld,rus,pol,tur,ell,ara,cmn",
               "max_pairs": 500}
    pairs = {"kind": "retrieval", "data": heldout, "languages": "", "max_pairs": HELDOUT_PAIRS}
    evals = {"tatoeba": tatoeba, "tatoeba_first": {**tatoeba, "pooling": "first", "layer": XLCO_LAYER},
             "heldout": pairs, "heldout_first": {**pairs, "pooling": "first", "layer": XLCO_LAYER}}
    arms = [Arm("mlm", "MLM", base="demo"), Arm("mlm_tlm", "MLM + TLM", base="demo_tlm"),
            Arm("mlm_tlm_xlco", "MLM + TLM + XLCo", base="demo_xlco"),
            Arm("mlm_adversarial", "MLM + language-adversarial", base="demo_adversarial")]
    return Study(name="objectives", title="Which pretraining objective aligns languages?", preset=preset,
                 base="demo", arms=arms, evals=evals, prepare=heldout_pairs,
                 headline=[(name, "acc", "higher") for name in evals],
                 overrides={"data.shards": 4, "data.languages": LANGUAGES, "train.num_steps": steps,
                            "train.warmup_steps": min(30, steps // 10)},
                 paper="XLM (TLM), InfoXLM (XLCo) and language-adversarial training (the objectives of xlm_jax)",
                 notes=(f"{steps} updates of 32 sequences of 64 tokens per arm, 13 languages of the built-in corpus. "
                        f"Columns: Tatoeba and held-out corpus pairs, each with the mean-pooled middle layer "
                        f"(XTREME) and with `<s>` at layer {XLCO_LAYER} (XLCo's vector)."))


def get_config(arg: str = "small"):
    return study_config(study, arg, __file__)
