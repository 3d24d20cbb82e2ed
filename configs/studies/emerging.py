"""Study: what makes a bilingual model cross-lingual (seed "Emerging Cross-lingual Structure in
Pretrained Language Models", Wu, Conneau et al. 2020).

  python -m xlm_jax.main --mode=study --config=configs/studies/emerging.py:small --workdir=runs/study_emerging

English + German MLM models, one per arm, on one budget:
  shared        everything shared (vocabulary, embeddings, every layer): the XLM-R recipe
  no_anchors    no shared vocabulary: each language its own id range (`data.language_id_ranges`),
                so no subword, number or name is one token in both languages
  sep_bottom1   no anchors, and the bottom layer per language (`model.language_specific_layers=1`):
                only the top 2 of 3 layers shared
  sep_bottom2   no anchors, the bottom two layers per language: only the top layer shared
  domains       everything shared, but English from another domain (Common Voice sentences) than
                German (UI strings)
The training text of `shared` is the machine's own gettext catalogs (UI strings, the demo's
corpus): English from every other en-de pair and German from the rest, so the two sides are
in one domain but never translations of each other. Each arm is evaluated by retrieval
(accuracy@1, both directions: Tatoeba deu-eng, and 500 held-out en-de UI-string pairs that
no arm trained on), layer-wise linear CKA and Procrustes retrieval on Tatoeba pairs, and
zero-shot POS (fine-tuned on English UD-EWT, tested on German PUD), each beside the arm's
own random-init baseline. XNLI is in the `paper` preset only: a 3-layer model fine-tuned on
1,000 English pairs stays at chance (the README's demo evaluation).
"""
import os

from xlm_jax.studies.study import Arm, Study, study_config

PRESETS = {
    "small": {"steps": 800, "lines": 5000, "heldout": 500, "pos_train": 500, "pos_epochs": 2.0, "pos_test": 100,
              "tatoeba": 500},
    "paper": {"steps": 200_000, "lines": 0, "heldout": 1000, "pos_train": 0, "pos_epochs": 10.0, "pos_test": 0,
              "tatoeba": 0},
}
UI = "{study}/corpus/ui"


def prepare(study_dir: str, lines: int = 0, heldout: int = 500) -> None:
    """{study}/corpus/ui/{en,de}.txt (English of the even en-de catalog pairs, German of the odd ones:
    one domain, no translations of each other) and {study}/corpus/heldout/en-de.tsv (pairs past
    those, neither side among the training lines)."""
    directory = os.path.join(study_dir, "corpus")
    if os.path.exists(os.path.join(directory, "heldout", "en-de.tsv")):
        return
    from xlm_jax.data.gettext_corpus import read_gettext_catalogs
    pairs = [(en, de) for en, de in read_gettext_catalogs().parallel[("en", "de")] if "\t" not in en + de]
    used = 2 * lines if lines else len(pairs) * 4 // 5
    english, german = [en for en, _ in pairs[0:used:2]], [de for _, de in pairs[1:used:2]]
    seen = set(english) | set(german)
    held = [(en, de) for en, de in pairs[used:] if en not in seen and de not in seen][:heldout]
    for name, rows in (("ui/en.txt", english), ("ui/de.txt", german),
                       ("heldout/en-de.tsv", [f"{en}\t{de}" for en, de in held])):
        os.makedirs(os.path.dirname(os.path.join(directory, name)), exist_ok=True)
        with open(os.path.join(directory, name) + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(f"{row}\n" for row in rows)
        os.replace(os.path.join(directory, name) + ".tmp", os.path.join(directory, name))


def study(preset: str) -> Study:
    p = PRESETS[preset]
    overrides = {"train.num_steps": p["steps"], "train.warmup_steps": p["steps"] // 10,
                 "checkpoint.every_steps": p["steps"] // 4, "train.log_every": 50,
                 "data.files": f"en:{UI}/en.txt;de:{UI}/de.txt", "data.max_sentences_per_language": 0,
                 "data.eval_sentences_per_language": 100}
    if preset == "paper":   # the paper's BERT-base-sized bilingual models
        overrides.update({"model.num_layers": 12, "model.hidden_size": 768, "model.num_heads": 12,
                          "model.mlp_dim": 3072, "model.vocab_size": 60_002, "data.seq_len": 128,
                          "train.batch_size": 256, "train.learning_rate": 1e-4,
                          "data.files": "en:/data/wiki/en.txt;de:/data/wiki/de.txt"})
    # each language its own 3,998 ids: the shared arms' 7,997 ordinary ids split in two (5 + 2 * 3,998)
    no_anchors = {"data.language_id_ranges": True, "model.vocab_size": 8001 if preset == "small" else 60_001}
    arms = [
        Arm("shared", "everything shared"),
        Arm("no_anchors", "no shared vocabulary (an id range per language)", no_anchors),
        Arm("sep_bottom1", "no anchors; bottom layer per language", {
            **no_anchors, "model.num_languages": 2, "model.language_specific_layers": 1}),
        Arm("sep_bottom2", "no anchors; bottom 2 layers per language", {
            **no_anchors, "model.num_languages": 2, "model.language_specific_layers": 2}),
        Arm("domains", "everything shared; English from Common Voice, German UI strings",
            {"data.files": f"en:{{data}}/mono/en.txt;de:{UI}/de.txt"}),
    ]
    evals = {
        "tatoeba": {"kind": "retrieval", "data": "{data}/tatoeba", "languages": "deu", "max_pairs": p["tatoeba"]},
        "heldout": {"kind": "retrieval", "data": "{study}/corpus/heldout/en-de.tsv", "languages": ""},
        "alignment": {"kind": "alignment", "data": "{data}/tatoeba", "languages": "deu",
                      "max_pairs": p["tatoeba"] or 1000},
        "pos": {"kind": "pos", "train": "{data}/pos/en_ewt-ud-dev.tsv", "test": "{data}/pos", "languages": "de,en",
                "max_train_sentences": p["pos_train"], "max_test_sentences": p["pos_test"],
                "epochs": p["pos_epochs"]},
    }
    if preset == "paper":
        evals["xnli"] = {"kind": "xnli", "data": "{data}/xnli", "languages": "en,de"}
    headline = [("tatoeba", "acc", "higher"), ("heldout", "acc", "higher"),
                ("alignment", "cka_layer_2", "higher"), ("alignment", "procrustes_acc_layer_2", "higher"),
                ("pos", "accuracy", "higher")]
    return Study(name="emerging", title="Emerging cross-lingual structure", preset=preset, base="demo",
                 arms=arms, evals=evals, headline=headline, overrides=overrides,
                 prepare=lambda study_dir: prepare(study_dir, p["lines"], p["heldout"]),
                 findings=findings, plots=figures,
                 paper="Emerging Cross-lingual Structure in Pretrained Language Models (Wu, Conneau et al., ACL 2020)",
                 notes=(f"The demo's encoder (3 layers, hidden 256, vocabulary 8,002), {p['steps']} updates of 32 "
                        "sequences of 64 tokens per arm, English + German. Retrieval uses XTREME's protocol (the "
                        "mean-pooled middle layer, 2 of 3); CKA and Procrustes are at layer 2 in the tables and "
                        "at every layer in the figure. Chance in retrieval is 1/pairs (0.002)."))


def _gain(results: dict, arm: str, evaluator: str, metric: str = "acc") -> tuple[float, float]:
    """(the arm's mean over target languages, its random-init baseline's)."""
    from xlm_jax.studies.report import mean_of, per_language
    record = results["arms"][arm]["evals"][evaluator]
    return (mean_of(per_language(record, metric, targets_only=True)),
            mean_of(per_language(record, metric, True, targets_only=True)))


def _transfers(results: dict, arm: str, evaluator: str = "heldout") -> bool:
    """Retrieval at least twice chance (1 / pairs) and twice the arm's random init."""
    record = results["arms"][arm]["evals"][evaluator]
    chance = 1 / max(record["details"]["sizes"][lang]["pairs"] for lang in record["details"]["sizes"])
    model, random_init = _gain(results, arm, evaluator)
    return model > 2 * max(chance, random_init)


def findings(results: dict) -> list[tuple[str, str, str]]:
    arms, out = results["arms"], []
    if {"shared", "no_anchors"} <= set(arms):
        for evaluator in ("heldout", "tatoeba"):
            (shared, shared_r), (none, none_r) = _gain(results, "shared", evaluator), _gain(results, "no_anchors", evaluator)
            out.append(("Transfer survives without a shared vocabulary (anchor points matter little)",
                        f"{evaluator} retrieval acc: no anchors {none:.3f} (random init {none_r:.3f}), shared "
                        f"{shared:.3f} (random init {shared_r:.3f}); holds if no anchors is > 2x chance and its "
                        "random init and >= half of shared",
                        "holds" if _transfers(results, "no_anchors", evaluator) and none >= 0.5 * shared
                        else "does not hold"))
        (shared, shared_r), (none, none_r) = (_gain(results, arm, "pos", "accuracy") for arm in ("shared", "no_anchors"))
        out.append(("... and zero-shot tagging transfers without it",
                    f"German POS accuracy: no anchors {none:.3f} (random init {none_r:.3f}), shared {shared:.3f} "
                    f"(random init {shared_r:.3f})",
                    "holds" if none > none_r and none >= 0.9 * shared else "does not hold"))
    if {"no_anchors", "sep_bottom1", "sep_bottom2"} <= set(arms):
        values = {arm: _gain(results, arm, "heldout")[0] for arm in ("no_anchors", "sep_bottom1", "sep_bottom2")}
        verdict = ("unclear: no arm without anchors transfers here, so there is nothing for separate layers to lose"
                   if not any(_transfers(results, arm) for arm in values) else
                   "holds" if values["sep_bottom1"] >= 0.7 * values["no_anchors"] and _transfers(results, "sep_bottom2")
                   else "does not hold")
        out.append(("Sharing the top layers matters most: separating bottom layers costs little, and transfer "
                    "survives while the top layer is shared",
                    "heldout retrieval acc: " + ", ".join(f"{arm} {v:.3f}" for arm, v in values.items()), verdict))
    if {"shared", "domains"} <= set(arms):
        shared, domains = _gain(results, "shared", "tatoeba")[0], _gain(results, "domains", "tatoeba")[0]
        verdict = ("unclear: the one-domain arm does not beat its own random init either"
                   if not _transfers(results, "shared", "tatoeba") else
                   "holds" if domains >= 0.7 * shared else "does not hold")
        out.append(("Transfer works across domains (languages trained on different kinds of text)",
                    f"tatoeba retrieval acc: different domains {domains:.3f}, one domain {shared:.3f}", verdict))
    return out


def figures(results: dict, directory: str) -> list[str]:
    """Mean CKA of Tatoeba translation pairs per layer, one line per arm."""
    from xlm_jax.evaluation import plots
    series = {}
    for arm, entry in results["arms"].items():
        record = entry["evals"].get("alignment")
        if record:
            cka = record["details"]["mean"]["cka"]
            series[arm] = (list(range(len(cka))), cka)
    if not series:
        return []
    plots.line_chart(os.path.join(directory, "cka_per_layer.png"), "linear CKA of translation pairs (Tatoeba deu-eng)",
                     series, xlabel="layer (0 = embeddings)", ylabel="CKA")
    return ["cka_per_layer.png"]


def get_config(arg: str = "small"):
    return study_config(study, arg, __file__)
