"""Study: which pretraining objective aligns languages? The demo model trained six ways, on one budget.

  python -m xlm_jax.main --mode=study --config=configs/studies/objectives.py:small --workdir=runs/study_objectives

One budget: every arm makes the same number of updates, each reading 4,096 input tokens
(padding included), with configs/demo.py's model (3 layers, 256 wide) and tokenizer settings,
on the built-in corpus's English and the 12 languages of the demo's Tatoeba evaluation:

  mlm              MLM, 64 blocks of 64 tokens (XLM-R)
  mlm_tlm          MLM + TLM, 32 + 32 sequences of 64 (XLM)
  infoxlm          MLM + TLM + XLCo as InfoXLM has it: 16 + 16 sequences and 16 pairs of 64;
                   the `<s>` vector of layer 2 of 3 (InfoXLM: 8 of 12), momentum 0.9999, no
                   normalization, temperature 0.25, a queue (1,024 keys: InfoXLM's 131,072
                   would never fill in this budget)
  contrastive      configs/demo_align.py: in-batch InfoNCE of mean-pooled layer-2 vectors, a
                   shared encoder (gradients through both sides), 64 pairs of 32 (mSimCSE)
  labse            LaBSE's translation ranking: the `<s>` vector of the last layer, an additive
                   margin of 0.3, in-batch negatives of a shared encoder, 64 pairs of 32
  mlm_contrastive  MLM (32 blocks of 32) + the contrastive arm's loss (48 pairs of 32)

Each arm is evaluated by retrieval (accuracy@1, both directions) on held-out in-domain pairs
(UI strings of the built-in corpus no arm reads: `builtin-heldout:5000`), Tatoeba and NTREX
news, with the mean-pooled middle layer (XTREME's vector, and the contrastive arms' own) and
with the `<s>` vector at layers 2 and 3 (InfoXLM's and LaBSE's own), each beside the arm's
random init and chance; a finding per arm says what it learned.
"""
import math

from xlm_jax.evaluation.suites import DEMO_LANGUAGES, retrieval_suite
from xlm_jax.studies.study import Arm, Study, study_config

PRESETS = {"small": {"steps": 300, "pairs": 200}, "paper": {"steps": 200_000, "pairs": 1000}}
CAP = 5000     # configs/demo.py's data.max_sentences_per_language: all a run reads of each language
RETRIEVAL = ("heldout", "tatoeba", "ntrex")


def study(preset: str) -> Study:
    p = PRESETS[preset]
    evals = {}
    for name, options in retrieval_suite(max_pairs=p["pairs"], heldout_after=CAP).items():
        evals[name] = options
        evals[f"{name}_first"] = {**options, "pooling": "first", "layer": "2,3"}
    arms = [
        Arm("mlm", "MLM", {"train.batch_size": 64}, base="demo"),
        Arm("mlm_tlm", "MLM + TLM", {"mlm.batch_size": 32, "tlm.batch_size": 32, "train.batch_size": 64},
            base="demo_tlm"),
        Arm("infoxlm", "MLM + TLM + XLCo (InfoXLM: <s>, momentum encoder, queue)",
            {"mlm.batch_size": 16, "tlm.batch_size": 16, "xlco.batch_size": 16, "xlco.momentum": 0.9999,
             "xlco.normalize": False, "xlco.temperature": 0.25, "xlco.batch_negatives": False,
             "xlco.queue_size": 1024}, base="demo_xlco"),
        Arm("contrastive", "in-batch contrast, mean-pooled layer 2, shared encoder", base="demo_align"),
        Arm("labse", "LaBSE: <s> of the last layer, additive margin 0.3, shared encoder",
            {"xlco.pooling": "cls", "xlco.layer": 3, "xlco.margin": 0.3}, base="demo_align"),
        Arm("mlm_contrastive", "MLM + in-batch contrast (mean-pooled layer 2)",
            {"objectives.mlm": 1.0, "mlm.batch_size": 32, "xlco.batch_size": 48}, base="demo_align"),
    ]
    headline = [(name, "acc", "higher") for name in RETRIEVAL]
    headline += [(f"{name}_first", metric, "higher") for name in RETRIEVAL for metric in ("acc", "acc_layer3")]
    return Study(name="objectives", title="Which pretraining objective aligns languages?", preset=preset,
                 base="demo", arms=arms, evals=evals, headline=headline, findings=findings,
                 overrides={"data.shards": 4, "data.languages": DEMO_LANGUAGES, "train.num_steps": p["steps"],
                            "train.warmup_steps": p["steps"] // 10, "checkpoint.every_steps": p["steps"],
                            "data.max_sentences_per_language": CAP},
                 paper="XLM (TLM), InfoXLM (XLCo), LaBSE (translation ranking) and mSimCSE (in-batch contrast)",
                 notes=(f"{p['steps']} updates of 4,096 input tokens per arm, English and 12 languages of the "
                        f"built-in corpus; retrieval on {p['pairs']} pairs per language (chance "
                        f"{1 / p['pairs']:.4f}). Columns: held-out UI-string pairs, Tatoeba and NTREX with the "
                        "mean-pooled middle layer (layer 2 of 3), then with `<s>` at layer 2 (`acc`: InfoXLM's "
                        "vector) and layer 3 (`acc_layer3`: LaBSE's)."))


OWN_VECTOR = {"infoxlm": ("_first", "acc", "<s> at layer 2"), "labse": ("_first", "acc_layer3", "<s> at layer 3")}


def _mean(record: dict, metric: str, random_init: bool = False) -> float:
    source = (record.get("random_init") or {}) if random_init else record
    values = [v[metric] for v in source.get("per_language", {}).values() if metric in v]
    return float(sum(values) / len(values)) if values else math.nan


def _verdict(trained: float, random: float, record: dict) -> str:
    """Accuracy@1 over both directions of n pairs in L languages: a difference within twice its
    sampling error (binomial, both models) is unclear."""
    n = sum(size["pairs"] for size in record.get("details", {}).get("sizes", {}).values()) * 2
    error = math.sqrt(max(trained * (1 - trained) + random * (1 - random), 1e-12) / max(n, 1))
    if abs(trained - random) <= 2 * error:
        return "unclear"
    return "above" if trained > random else "below"


def findings(results: dict) -> list[tuple[str, str, str]]:
    """One line per arm: does its mean-pooled vector (and its own vector) retrieve translations better
    than its random init, on in-domain pairs, Tatoeba and NTREX?"""
    rows = []
    for arm, entry in results["arms"].items():
        suffix, metric, label = OWN_VECTOR.get(arm, ("", "acc", "mean-pooled layer 2"))
        parts, verdicts = [], []
        for name in RETRIEVAL:
            record = entry["evals"].get(name, {})
            trained, random = _mean(record, "acc"), _mean(record, "acc", True)
            verdicts.append(_verdict(trained, random, record))
            parts.append(f"{name} {trained:.3f} ({random:.3f})")
        own = ""
        if suffix:
            own_parts = []
            for name in RETRIEVAL:
                record = entry["evals"].get(name + suffix, {})
                own_parts.append(f"{name} {_mean(record, metric):.3f} ({_mean(record, metric, True):.3f})")
            own = f"; its own vector ({label}): " + ", ".join(own_parts)
        learned = {("above",) * 3: "aligns: above random init on all three",
                   ("below",) * 3: "unlearns alignment: below random init on all three"}.get(
            tuple(verdicts), "mixed: " + ", ".join(f"{n} {v}" for n, v in zip(RETRIEVAL, verdicts)))
        rows.append((f"`{arm}` aligns languages beyond its random weights (mean-pooled middle layer)",
                     ", ".join(parts) + " (random init in parentheses)" + own, learned))
    return rows


def get_config(arg: str = "small"):
    return study_config(study, arg, __file__)
