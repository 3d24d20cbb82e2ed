"""Study: adapting a multilingual model to a low-resource language (seed "Cross-lingual pretrained
models for low-resource languages"), one step added per arm.

  python -m xlm_jax.main --mode=study --config=configs/studies/lowres.py:small --workdir=runs/study_lowres
  # from a published model instead of the study's own base (the paper preset's way):
  python -m xlm_jax.main --mode=study --config=configs/studies/lowres.py:paper --workdir=runs/lowres_xlmr \
      --config.study.start_model=hf:/models/xlm-roberta-base

Arms, each starting from the `base` model and adding one step to the arm before it:
  base          the starting model: MLM from scratch on English, Greek, Ukrainian and Vietnamese
                (../shared/data/mono), nothing of Swahili; evaluated as it is ("before")
  mlm           + its vocabulary extended for Swahili (`data.extend_vocab_pieces` pieces trained on
                Swahili text alone: `data.extend_vocab_languages`), MLM continued on Swahili text
                (the Bible NT) beside the four old languages
  tlm           + TLM on English-Swahili pairs (TICO-19, health domain)
  xlco          + XLCo (InfoXLM's contrast) on the same pairs
  adversarial   + a language discriminator behind gradient reversal
  balanced      + Swahili oversampled to half of the MLM text (`data.language_floors`), where the
                arms before it sample in proportion to size (`data.alpha=1`)
  synthetic     + a second, tagged pair source at 30% of the pair examples with loss weight 0.5
                (`data.synthetic_pairs`): the stand-in here is NTREX's English-Swahili news
                (human translations, read through the synthetic-source path; xlm_jax has no MT
                system: a back-translated TSV goes in the same field)
Each is evaluated on Swahili: retrieval (Tatoeba swh-eng, 390 pairs, and 500 held-out TICO-19
pairs no arm trained on), masked-LM quality as pseudo-log-likelihood per character on the
first 100 of 200 held-out Bible lines (per character, so vocabularies of different sizes
compare) and, for forgetting, on 100 English Tatoeba sentences.
"""
import math
import os

from xlm_jax.studies.study import Arm, Study, study_config

TARGET = "sw"
OLD = ("en", "el", "uk", "vi")
PRESETS = {
    "small": {"base_steps": 800, "steps": 300, "pieces": 1000, "heldout_lines": 200, "heldout_pairs": 500},
    "paper": {"base_steps": 0, "steps": 50_000, "pieces": 30_000, "heldout_lines": 1000, "heldout_pairs": 500},
}
CORPUS = "{study}/corpus"


def prepare(study_dir: str, heldout_lines: int, heldout_pairs: int) -> None:
    """{study}/corpus: Swahili text and TICO-19 pairs minus what is held out for evaluation
    ({study}/heldout), and NTREX's en-sw news as the tagged second pair source."""
    from xlm_jax.evaluation.suites import DATA
    root = os.path.join(study_dir, "corpus")
    if os.path.exists(os.path.join(root, "done")):
        return

    def lines(path):
        with open(os.path.join(DATA, path), encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]

    def write(name, rows):
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(f"{row}\n" for row in rows)

    text, pairs = lines(f"mono/{TARGET}.txt"), lines(f"parallel/tico19/en-{TARGET}.tsv")
    write(f"{TARGET}.txt", text[:-heldout_lines])
    write(f"heldout/{TARGET}.txt", text[-heldout_lines:])
    write(f"en-{TARGET}.tsv", pairs[:-heldout_pairs])
    write(f"heldout/en-{TARGET}.tsv", pairs[-heldout_pairs:])
    news = zip(lines("ntrex/newstest2019-src.eng.txt"), lines("ntrex/newstest2019-ref.swa.txt"))
    write(f"synthetic/en-{TARGET}.tsv", [f"{en}\t{sw}" for en, sw in news if "\t" not in en + sw])
    write("done", [])


def study(preset: str) -> Study:
    p = PRESETS[preset]
    old_text = ";".join(f"{lang}:{{data}}/mono/{lang}.txt" for lang in OLD)
    adapt_text = f"{TARGET}:{CORPUS}/{TARGET}.txt;{old_text};en-{TARGET}:{CORPUS}/en-{TARGET}.tsv"
    common = {"train.log_every": 50, "data.max_sentences_per_language": 0, "data.eval_sentences_per_language": 100}
    steps = {"train.num_steps": p["steps"], "train.warmup_steps": p["steps"] // 10,
             "checkpoint.every_steps": p["steps"] // 3}
    mlm = {**steps, "data.files": adapt_text, "data.extend_vocab_pieces": p["pieces"],
           "data.extend_vocab_languages": TARGET, "data.alpha": 1.0,
           "train.learning_rate": 5e-4}
    tlm = {**mlm, "data.shards": 4, "objectives.tlm": 1.0, "mlm.batch_size": 16, "tlm.batch_size": 16}
    xlco = {**tlm, "objectives.xlco": 1.0, "mlm.batch_size": 8, "tlm.batch_size": 8, "xlco.batch_size": 8,
            "xlco.queue_size": 1024, "xlco.momentum": 0.999, "xlco.temperature": 0.1, "xlco.normalize": True,
            "xlco.batch_negatives": True}
    adversarial = {**xlco, "objectives.adversarial": 1.0, "adversarial.lambda_max": 0.1}
    balanced = {**adversarial, "data.alpha": 0.3, "data.language_floors": f"{TARGET}:0.5"}
    synthetic = {**balanced, "data.synthetic_pairs": f"en-{TARGET}:{CORPUS}/synthetic/en-{TARGET}.tsv",
                 "data.synthetic_ratio": 0.3, "data.synthetic_weight": 0.5}
    start = "base"
    arms = [Arm("mlm", "+ vocabulary extended, MLM on Swahili", mlm, start),
            Arm("tlm", "+ TLM on en-sw pairs", tlm, start),
            Arm("xlco", "+ XLCo on the pairs", xlco, start),
            Arm("adversarial", "+ language-adversarial", adversarial, start),
            Arm("balanced", "+ Swahili oversampled to half", balanced, start),
            Arm("synthetic", "+ tagged second pair source (30%, weight 0.5)", synthetic, start)]
    if preset == "small":
        arms.insert(0, Arm("base", "starting model (no Swahili)", {
            "data.files": old_text, "train.num_steps": p["base_steps"], "train.warmup_steps": p["base_steps"] // 10,
            "checkpoint.every_steps": p["base_steps"] // 4}))
    else:
        arms.insert(0, Arm("base", "the given model (--config.study.start_model=hf:DIR), evaluated as it is",
                           {"data.files": old_text}, "hf:", train=False))
    evals = {
        "tatoeba": {"kind": "retrieval", "data": "{data}/tatoeba", "languages": "swh"},
        "heldout": {"kind": "retrieval", "data": f"{CORPUS}/heldout/en-{TARGET}.tsv", "languages": ""},
        "mlm_quality": {"kind": "pseudo_perplexity", "max_sentences": 100, "random_init_baseline": False,
                        "files": f"{TARGET}:{CORPUS}/heldout/{TARGET}.txt,en:{{data}}/tatoeba/tatoeba.swh-eng.eng"},
    }
    headline = [("tatoeba", "acc", "higher"), ("heldout", "acc", "higher"),
                ("mlm_quality", "nats_per_char", "lower", TARGET), ("mlm_quality", "tokens_per_word", "lower", TARGET),
                ("mlm_quality", "nats_per_char", "lower", "en")]
    return Study(name="lowres", title="Adapting a multilingual model to a low-resource language (Swahili)",
                 preset=preset, base="demo", arms=arms, evals=evals, headline=headline, overrides=common,
                 prepare=lambda study_dir: prepare(study_dir, p["heldout_lines"], p["heldout_pairs"]),
                 findings=findings,
                 paper="Cross-lingual pretrained models for low-resource languages (the seed's recipe: vocabulary "
                       "extension, continued MLM, alignment objectives, language balancing, synthetic pairs)",
                 notes=(f"The demo's encoder (3 layers, hidden 256); the base arm {p['base_steps']} updates, every "
                        f"other arm {p['steps']} updates from the base's final weights (exported and re-imported, "
                        f"as a transformers XLM-R directory would be), with {p['pieces']} SentencePiece pieces "
                        "added for Swahili. 32 sequences of 64 tokens per update in every arm."))


def _mean(results, arm, evaluator, metric, language=None):
    from xlm_jax.studies.report import mean_of, per_language
    values = per_language(results["arms"][arm]["evals"][evaluator], metric)
    return values.get(language, float("nan")) if language else mean_of(values)


def findings(results: dict) -> list[tuple[str, str, str]]:
    arms, out = results["arms"], []

    def sw(arm, evaluator="mlm_quality", metric="nats_per_char"):
        return _mean(results, arm, evaluator, metric, TARGET if evaluator == "mlm_quality" else None)

    def compare(claim, evaluator, metric, before, after, better_if_lower=False):
        if {before, after} <= set(arms):
            a, b = sw(before, evaluator, metric), sw(after, evaluator, metric)
            measured = f"{evaluator} {metric}: {before} {a:.3f} -> {after} {b:.3f}"
            if metric == "acc":   # accuracy@1 over both directions of n pairs: its sampling error
                n = 2 * sum(v["pairs"] for v in arms[after]["evals"][evaluator]["details"]["sizes"].values())
                se = math.sqrt(a * (1 - a) / n + b * (1 - b) / n)
                measured += f" (s.e. of the difference {se:.3f})"
                if abs(b - a) < 2 * se:
                    out.append((claim, measured, "unclear: within twice the sampling error"))
                    return
            improved = b < a if better_if_lower else b > a
            out.append((claim, measured, "holds" if improved else "does not hold"))

    compare("Vocabulary extension and continued MLM make the model a language model of the new language",
            "mlm_quality", "nats_per_char", "base", "mlm", better_if_lower=True)
    compare("... and improve its cross-lingual retrieval for that language", "heldout", "acc", "base", "mlm")
    compare("TLM on the new language's pairs adds transfer beyond MLM", "heldout", "acc", "mlm", "tlm")
    compare("XLCo adds transfer beyond TLM", "heldout", "acc", "tlm", "xlco")
    compare("Language-adversarial training adds transfer", "heldout", "acc", "xlco", "adversarial")
    compare("Oversampling the new language makes it a better language model", "mlm_quality", "nats_per_char",
            "adversarial", "balanced", better_if_lower=True)
    compare("Synthetic (here: extra, other-domain) pairs add transfer", "heldout", "acc", "balanced", "synthetic")
    if {"base", "synthetic"} <= set(arms):
        en = {a: _mean(results, a, "mlm_quality", "nats_per_char", "en") for a in arms}
        out.append(("Adapting to a new language costs little on the old ones (forgetting)",
                    "English pseudo-log-likelihood (nats/char): " + ", ".join(f"{a} {v:.3f}" for a, v in en.items())
                    + "; holds if every arm stays within 10% of the base",
                    "holds" if max(en.values()) <= 1.1 * en["base"] else "does not hold"))
    return out


def get_config(arg: str = "small"):
    return study_config(study, arg, __file__)
