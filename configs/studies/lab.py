"""Study: the small lab where multilinguality emerges from MLM alone (Dufter & Schuetze, EMNLP 2020,
"Identifying Elements Essential for BERT's Multilinguality"; code: pdufter/minimult).

  python -m xlm_jax.main --mode=study --config=configs/studies/lab.py:small --workdir=runs/study_lab

English plus "Fake-English": the same English text under a second language name, `qfe` (ISO 639
keeps qaa-qtz for local use, so no real language has it), with `data.language_id_ranges`, so
every Fake-English id is its English id shifted by the P ordinary ids per language: the two
languages share no token but the specials. A tiny BERT (hidden 64, one head) learns MLM on both;
multilinguality is measured by
  retrieval         held-out English sentence i <-> its Fake-English copy, accuracy@1 both ways,
                    the mean of a layer's token states between <s> and </s> (the paper's pooling)
  word_translation  Fake word i <-> word i for every ordinary id (`<s> w </s>` alone), precision@1
each at the embedding output (layer 0) and at two thirds of the depth (the paper's layer 8 of
12), beside the arm's random init and chance. The arms are ordinary options:
  original      as the paper's: random replacements drawn from both languages' ids
                (`data.random_token_language=any`: minimult draws from the whole doubled vocabulary)
  lang_pos      a position table per language (`model.language_specific_positions`; with
                `model.num_languages=2`, which adds a language embedding, as the paper's segment id)
  own_specials  each language its own <s> </s> <unk> <mask> (`data.shared_specials=False`)
  no_random     no random replacement: 90% <mask>, 10% kept (minimult's --do_not_replace_with_random_words)
  overparam     a wider model (small: 128; paper: BERT-base, 768 wide at the paper's lr 1e-4)
  not_parallel  English from the first half of the corpus, Fake-English from the second
The corpus is English Common Voice sentences (../shared/data/mono/en.txt; the paper's
easy-to-read Bible is not public): `small` trains on its first 500 lines, `paper` on 5,000;
retrieval uses 500 held-out lines at its end, which no arm trains on.
"""
import os

from xlm_jax.studies.study import Arm, Study, study_config

FAKE = "qfe"
PRESETS = {
    # 4 layers, not 12, and 1,500 updates of 64 x 32 tokens (~160 epochs of the 500 lines in each
    # language; the paper's 100): 27 minutes on 2 quiet cores (51 loaded; docs/studies/lab/report.md).
    "small": {"lines": 500, "heldout": 500, "layers": 4, "pieces": 300, "steps": 1500, "batch": 64,
              "seq_len": 32, "packing": "stream", "dropout": 0.0, "schedule": "constant", "wide": 128,
              "wide_lr": 2e-3},
    # minimult's run.sh: 12 layers of 64, 1 head, FFN 256, batch 256, lr 2e-3, warmup 50, 100
    # epochs of one line per sequence (block 128), a WordPiece vocabulary of 2,048; overparam is
    # BERT-base (768, 12 heads) at lr 1e-4.
    "paper": {"lines": 5000, "heldout": 500, "layers": 12, "pieces": 2043, "steps": 4000, "batch": 256,
              "seq_len": 128, "packing": "lines", "dropout": 0.1, "schedule": "linear", "wide": 768,
              "wide_lr": 1e-4},
}


def prepare(study_dir: str, lines: int, heldout: int, source: str = "") -> None:
    """{study}/corpus: en.txt (the first `lines` lines of `source`, default mono/en.txt of the
    evaluation data), first.txt and second.txt (its halves), heldout/qfe-en.tsv (the last
    `heldout` lines, none of them trained on, each beside itself: the Fake-English side is the
    same text in qfe's ids)."""
    directory = os.path.join(study_dir, "corpus")
    if os.path.exists(os.path.join(directory, "heldout", f"{FAKE}-en.tsv")):
        return
    if not source:
        from xlm_jax.evaluation.suites import DATA
        source = os.path.join(DATA, "mono", "en.txt")
    with open(source, encoding="utf-8") as f:
        text = [line.strip() for line in f if line.strip()]
    train = text[:lines]
    seen = set(train)
    held = [line for line in text[len(text) - heldout:] if line not in seen and "\t" not in line]
    files = {"en.txt": train, "first.txt": train[:len(train) // 2], "second.txt": train[len(train) // 2:],
             f"heldout/{FAKE}-en.tsv": [f"{line}\t{line}" for line in held]}
    for name, rows in files.items():
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(f"{row}\n" for row in rows)
        os.replace(path + ".tmp", path)


def deep_layer(num_layers: int) -> int:
    """The paper's contextual layer, 8 of 12: two thirds of the depth."""
    return round(2 * num_layers / 3)


def study(preset: str) -> Study:
    p = PRESETS[preset]
    corpus = "{study}/corpus"
    vocab = 5 + 2 * p["pieces"]   # language_id_ranges: 5 shared specials + P ids per language
    overrides = {
        "model.num_layers": p["layers"], "model.hidden_size": 64, "model.num_heads": 1, "model.mlp_dim": 256,
        "model.vocab_size": vocab, "model.max_len": p["seq_len"],
        "model.dropout_rate": p["dropout"], "model.attention_dropout_rate": p["dropout"],
        "data.files": f"en:{corpus}/en.txt;{FAKE}:{corpus}/en.txt", "data.language_id_ranges": True,
        "data.random_token_language": "any", "data.byte_fallback": False, "data.seq_len": p["seq_len"],
        "data.packing": p["packing"], "data.max_sentences_per_language": 0, "data.eval_sentences_per_language": 50,
        "data.max_eval_languages": 0, "data.tokenizer_sentences": 20_000,
        "train.num_steps": p["steps"], "train.batch_size": p["batch"], "train.learning_rate": 2e-3,
        "train.schedule": p["schedule"], "train.warmup_steps": 50, "train.log_every": 100,
        "checkpoint.every_steps": p["steps"],
    }
    wide = p["wide"]
    arms = [
        Arm("original", "English + Fake-English, everything shared"),
        Arm("lang_pos", "a position table per language", {
            "model.num_languages": 2, "model.language_specific_positions": True}),
        Arm("own_specials", "each language its own <s> </s> <unk> <mask>", {
            "data.shared_specials": False, "model.vocab_size": 1 + 2 * (p["pieces"] + 4)}),
        Arm("no_random", "no random-token replacement (90% <mask>, 10% kept)", {
            "data.random_token_prob": 0.0, "data.mask_token_prob": 0.9}),
        Arm("overparam", f"hidden {wide}, {wide // 64} heads, FFN {4 * wide}, lr {p['wide_lr']:g}", {
            "model.hidden_size": wide, "model.num_heads": wide // 64, "model.mlp_dim": 4 * wide,
            "train.learning_rate": p["wide_lr"]}),
        Arm("not_parallel", "English from the first half of the corpus, Fake-English from the second", {
            "data.files": f"en:{corpus}/first.txt;{FAKE}:{corpus}/second.txt"}),
    ]
    deep = deep_layer(p["layers"])
    layers = ",".join(map(str, [deep, 0] + [k for k in range(1, p["layers"] + 1) if k != deep]))
    evals = {
        "retrieval": {"kind": "retrieval", "data": f"{corpus}/heldout/{FAKE}-en.tsv", "languages": "",
                      "pooling": "inner", "layer": layers},
        "word_translation": {"kind": "word_translation", "languages": f"{FAKE}-en", "layer": layers},
        "mlm": {"kind": "mlm"},
    }
    headline = [("retrieval", "acc", "higher"), ("retrieval", "acc_layer0", "higher"),
                ("word_translation", "p1", "higher"), ("word_translation", "p1_layer0", "higher"),
                ("mlm", "loss", "lower")]
    return Study(name="lab", title="The small lab: multilinguality from MLM alone", preset=preset, base="demo",
                 arms=arms, evals=evals, headline=headline, overrides=overrides,
                 prepare=lambda study_dir: prepare(study_dir, p["lines"], p["heldout"]),
                 findings=lambda results: findings(results, deep), plots=lambda r, d: figures(r, d, deep),
                 paper="Identifying Elements Essential for BERT's Multilinguality (Dufter & Schuetze, EMNLP 2020)",
                 notes=notes(preset, p, deep))


def notes(preset: str, p: dict, deep: int) -> str:
    return (f"English + Fake-English ({FAKE}: the same text, every ordinary id shifted by P = {p['pieces']}), "
            f"{p['lines']} lines of English Common Voice sentences; a BERT of {p['layers']} layers, hidden 64, one "
            f"head, FFN 256 ({p['steps']} updates of {p['batch']} sequences of {p['seq_len']} tokens, lr 2e-3). "
            f"Retrieval: {p['heldout']} held-out sentences and their Fake-English copies; word translation: the "
            f"{p['pieces']} ordinary ids. Headline layer {deep} (the paper's 8 of 12: two thirds of the depth) and "
            "layer 0 (the embedding output); `multilinguality` in the findings is the mean of the four, as the "
            "paper's score averages its measures over layers 0 and 8."
            + (" Deviations from the paper, for 2 CPU cores (prototype runs of the original arm, held-out retrieval "
               "at layer 3 after 1,500 updates): 4 layers, not 12 (8 layers learned no faster per update, 0.11 vs "
               "0.09 at 1,000, at twice the cost); a constant learning rate after warmup (the paper's linear decay "
               "left 0.18 instead of 0.50); 32-token streams, not one line per 128-token sequence; no dropout; "
               "the overparameterised arm is 128 wide (not 768) and keeps the learning rate (the paper gives "
               "BERT-base 1e-4), so that width alone changes." if preset == "small" else ""))


# ---------------------------------------------------------------- the paper's findings


def _values(results: dict, arm: str, evaluator: str, metric: str) -> tuple[float, float, float]:
    """(the arm's value, its random init's, chance) of a per-language metric (one language: qfe)."""
    from xlm_jax.studies.report import mean_of, per_language
    record = results["arms"][arm]["evals"][evaluator]
    return (mean_of(per_language(record, metric)), mean_of(per_language(record, metric, True)),
            mean_of(per_language({"per_language": record.get("chance", {})}, metric)))


MEASURES = (("retrieval", "acc"), ("retrieval", "acc_layer0"), ("word_translation", "p1"),
            ("word_translation", "p1_layer0"))


def multilinguality(results: dict, arm: str) -> tuple[float, float]:
    """(the paper's score: the mean of retrieval and word translation at the deep layer and layer 0,
    the same of the arm's random init)."""
    values = [_values(results, arm, *measure) for measure in MEASURES]
    return sum(v[0] for v in values) / len(values), sum(v[1] for v in values) / len(values)


def _multilingual(results: dict, arm: str) -> bool:
    """Retrieval and word translation at the deep layer both above 0.1, 3x random init and 10x chance."""
    return all(value > max(0.1, 3 * random_init, 10 * chance)
               for value, random_init, chance in (_values(results, arm, e, m) for e, m in MEASURES[::2]))


def findings(results: dict, deep: int) -> list[tuple[str, str, str]]:
    arms, out = results["arms"], []
    if "original" not in arms:
        return out
    measured = lambda arm: ", ".join(   # noqa: E731
        f"{e} {m} {v:.3f} (random init {r:.3f}, chance {c:.3f})"
        for e, m in MEASURES[::2] for v, r, c in [_values(results, arm, e, m)])
    base, base_random = multilinguality(results, "original")
    original = _multilingual(results, "original")
    out.append(("The small original model becomes multilingual (English <-> Fake-English without a shared token)",
                f"layer {deep}: {measured('original')}; holds if both are above 0.1, 3x random init and 10x chance",
                "holds" if original else "does not hold"))
    claims = {"lang_pos": "Language-specific position embeddings harm multilinguality",
              "own_specials": "Not sharing the special tokens harms multilinguality",
              "no_random": "Masking without random-token replacement harms multilinguality",
              "overparam": "Overparameterisation harms multilinguality (a larger model stays monolingual)",
              "not_parallel": "A comparable (parallel) corpus helps: without it multilinguality drops"}
    for arm, claim in claims.items():
        if arm not in arms:
            continue
        score, random_init = multilinguality(results, arm)
        verdict = ("unclear: the original arm is not multilingual here, so there is nothing to harm" if not original
                   else "holds" if score <= 0.8 * base else "does not hold")
        out.append((claim, f"multilinguality {score:.3f} (random init {random_init:.3f}) vs original {base:.3f} "
                           f"(random init {base_random:.3f}); layer {deep}: {measured(arm)}; holds if at most 0.8x "
                           "the original's", verdict))
    return out


def figures(results: dict, directory: str, deep: int) -> list[str]:
    """Each arm's multilinguality score (its random init's as a tick, chance dashed); and each
    measure by layer, with the arms' mean random init and chance as lines of their own."""
    from xlm_jax.evaluation import plots
    arms = list(results["arms"])
    scores = {arm: {"multilinguality": multilinguality(results, arm)[0]} for arm in arms}
    baselines = {arm: {"multilinguality": multilinguality(results, arm)[1]} for arm in arms}
    chance = sum(_values(results, arms[0], *measure)[2] for measure in MEASURES) / len(MEASURES)
    files = [os.path.basename(plots.bar_chart(
        os.path.join(directory, "multilinguality.png"), f"multilinguality (layers 0 and {deep})", scores, "score",
        baselines=baselines, chance={"multilinguality": chance}))]
    for evaluator, metric in (("retrieval", "acc"), ("word_translation", "p1")):
        series, random_init = {}, []
        for arm in arms:
            record = results["arms"][arm]["evals"][evaluator]
            curve, initial = record["details"]["per_layer"], record["random_init"]["details"]["per_layer"]
            layers = sorted(curve, key=int)
            series[arm] = ([int(k) for k in layers], [curve[k][FAKE][metric] for k in layers])
            random_init.append([initial[k][FAKE][metric] for k in layers])
        xs = series[arms[0]][0]
        series["random init (mean of the arms)"] = (xs, [sum(v) / len(v) for v in zip(*random_init)])
        series["chance"] = (xs, [_values(results, arms[0], evaluator, metric)[2]] * len(xs))
        name = f"{evaluator}_by_layer.png"
        plots.line_chart(os.path.join(directory, name), f"{evaluator} {metric} by layer (English <-> Fake-English)",
                         series, xlabel="layer (0 = embeddings)", ylabel=metric)
        files.append(name)
    return files


def get_config(arg: str = "small"):
    return study_config(study, arg, __file__)
