"""Study: cross-lingual transfer measured in bytes (seed "Measuring Cross-lingual Transfer in Bytes").

  python -m xlm_jax.main --mode=study --config=configs/studies/bytes.py:small --workdir=runs/study_bytes

Byte-level models (vocabulary of 256 bytes + specials) are pretrained with MLM on one source
language each; the Data-Transfer evaluator (xlm_jax/evaluation/data_transfer.py) then
fine-tunes each on increasing slices of a target language's text and trains the same
architecture from scratch on the same slices: D_T = D_E - D_F, the extra target bytes a
from-scratch model needs to reach the fine-tuned model's held-out loss. One more arm trains
a SentencePiece model on the first source for comparison (its vocabulary, learned on the
source alone, meets the targets through byte fallback).

Sources (../shared/data/mono): English (Common Voice sentences), Greek (Wikipedia) and
Japanese (Wikipedia): three scripts. Targets: Swahili (Bible NT)
and Yoruba (news and read speech prompts), neither seen in pretraining.
Presets: `small` (the demo-sized encoder, minutes per arm on 2 CPU cores) and `paper`
(the paper's ~65M-parameter byte model: 12 layers, hidden 768... documented, not run here).
"""
from xlm_jax.studies.study import Arm, Study, study_config

SOURCES = {"en": "English", "el": "Greek", "ja": "Japanese"}
TARGETS = {"sw": "Swahili", "yo": "Yoruba"}
PRESETS = {   # pretraining steps, data-transfer fine-tuning steps and slice sizes (bytes)
    "small": {"steps": 400, "dt_steps": 60, "sizes": "4000,16000,64000", "seq_len": 128},
    "paper": {"steps": 100_000, "dt_steps": 2000, "sizes": "1000000,4000000,16000000,64000000",
              "seq_len": 512},
}


def study(preset: str) -> Study:
    p = PRESETS[preset]
    overrides = {"train.num_steps": p["steps"], "train.warmup_steps": p["steps"] // 10,
                 "data.min_languages": 1, "data.seq_len": p["seq_len"], "model.max_len": p["seq_len"] + 2,
                 "data.eval_sentences_per_language": 100, "checkpoint.every_steps": p["steps"] // 2,
                 "train.log_every": 50}
    if preset == "paper":   # ~65M parameters, as the paper's byte models
        overrides.update({"model.num_layers": 12, "model.hidden_size": 768, "model.num_heads": 12,
                          "model.mlp_dim": 3072, "train.batch_size": 256, "train.learning_rate": 5e-4})
    byte = {"data.tokenizer": "bytes", "model.vocab_size": 261}
    arms = [Arm(f"bytes_{src}", f"bytes, pretrained on {name}", {**byte, "data.files": f"{src}:{{data}}/mono/{src}.txt"})
            for src, name in SOURCES.items()]
    first = next(iter(SOURCES))
    # 4,002 ids: the 250 KB of English text supports at most ~6,700
    arms.append(Arm(f"sentencepiece_{first}", f"SentencePiece unigram (4,002 ids), pretrained on {SOURCES[first]}",
                    {"data.files": f"{first}:{{data}}/mono/{first}.txt", "data.tokenizer": "unigram",
                     "model.vocab_size": 4002}))
    evals = {f"dt_{tgt}": {"kind": "data_transfer", "text": f"{{data}}/mono/{tgt}.txt", "language": tgt,
                           "sizes": p["sizes"], "steps": p["dt_steps"], "seq_len": p["seq_len"]}
             for tgt in TARGETS}
    headline = [(f"dt_{tgt}", "dt_bytes", "higher") for tgt in TARGETS]
    headline += [(f"dt_{tgt}", "effective_fraction", "higher") for tgt in TARGETS]
    return Study(name="bytes", title="Cross-lingual transfer measured in bytes", preset=preset, base="demo",
                 arms=arms, evals=evals, headline=headline, overrides=overrides, findings=findings, plots=figures,
                 paper="Measuring Cross-lingual Transfer in Bytes (arXiv 2404.08191)",
                 notes=(f"Sources: {', '.join(SOURCES.values())} (../shared/data/mono); targets: "
                        f"{', '.join(TARGETS.values())}. {p['steps']} pretraining updates of 32 sequences of "
                        f"{p['seq_len']} tokens per arm; D_T from fine-tuning and from-scratch runs of "
                        f"{p['dt_steps']} updates on the first {p['sizes']} bytes of each target. D_T is read "
                        "at the smallest slice (the evaluator's headline), where transfer matters most."))


def _transfer(results: dict, arm: str, target: str) -> float:
    return results["arms"][arm]["evals"][f"dt_{target}"]["summary"]["dt_bytes"]


def _bounded(results: dict, arm: str, target: str) -> bool:
    """D_T is only a lower bound: the fine-tuned model beat the from-scratch model at every slice."""
    return bool(results["arms"][arm]["evals"][f"dt_{target}"]["summary"]["bound"])


def findings(results: dict) -> list[tuple[str, str, str]]:
    out = []
    byte_arms = [f"bytes_{src}" for src in SOURCES if f"bytes_{src}" in results["arms"]]
    for tgt, name in TARGETS.items():
        values = {arm.removeprefix("bytes_"): _transfer(results, arm, tgt) for arm in byte_arms}
        if len(values) < 2:
            continue
        low, high = min(values.values()), max(values.values())
        spread = (high - low) / max(abs(high), 1.0)
        measured = ", ".join(f"{src} {v:,.0f}" for src, v in values.items()) + f" bytes (spread {spread:.0%} of the largest)"
        bounded = [arm.removeprefix("bytes_") for arm in byte_arms if _bounded(results, arm, tgt)]
        if bounded:
            measured += f"; lower bounds for {', '.join(bounded)} (fine-tuned beat every from-scratch slice)"
        verdict = ("unclear: D_T is a lower bound for every source" if len(bounded) == len(byte_arms) else
                   "holds" if low > 0 and high <= 2 * low else "does not hold" if low <= 0 < high else "unclear")
        out.append((f"D_T into {name} is similar whichever source language the byte model learned",
                    measured, verdict))
    sp = f"sentencepiece_{next(iter(SOURCES))}"
    if sp in results["arms"] and f"bytes_{next(iter(SOURCES))}" in results["arms"]:
        for tgt, name in TARGETS.items():
            b, s = _transfer(results, f"bytes_{next(iter(SOURCES))}", tgt), _transfer(results, sp, tgt)
            out.append((f"Bytes carry transfer without a shared vocabulary ({name}, same source)",
                        f"bytes {b:,.0f} vs SentencePiece {s:,.0f} bytes of D_T",
                        "holds" if b > 0 else "does not hold"))
    return out


def figures(results: dict, directory: str) -> list[str]:
    """Held-out loss against target bytes, fine-tuned and from scratch, one figure per target."""
    import os
    from xlm_jax.evaluation import plots
    files = []
    for tgt, name in TARGETS.items():
        series = {}
        for arm, entry in results["arms"].items():
            details = entry["evals"][f"dt_{tgt}"]["details"]
            series[arm] = (details["sizes"], details["finetuned_losses"])
            kind = "bytes" if arm.startswith("bytes_") else "SentencePiece"   # one scratch curve per tokenizer
            series.setdefault(f"from scratch ({kind})", (details["sizes"], details["scratch_losses"]))
        file = f"data_transfer_{tgt}.png"
        plots.line_chart(os.path.join(directory, file), f"held-out MLM loss on {name} after fine-tuning",
                         series, xlabel="target bytes", ylabel="loss", log_x=True)
        files.append(file)
    return files


def get_config(arg: str = "small"):
    return study_config(study, arg, __file__)
