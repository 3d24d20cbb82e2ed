"""Which pretraining objective aligns languages? The demo model trained four ways, on one budget.

  python -m xlm_jax.studies.objectives --workdir=runs/objective_study

Arms (configs/demo*.py: the same model, tokenizer settings, steps and 32 sequences of
data.seq_len tokens per update): MLM; MLM + TLM; MLM + TLM + XLCo (InfoXLM's recipe); MLM +
language-adversarial. They train on the built-in corpus in the 13 languages of the demo
suite's Tatoeba evaluation (English and its 12 partners: `data.languages`, so that the
corpus's 12 en-xx pair sets carry the pairs instead of 172). Each arm is an ordinary run
directory <workdir>/<arm>: a finished arm is skipped, an interrupted one resumes. Each is
then evaluated by retrieval (accuracy@1) on Tatoeba with XTREME's protocol (mean-pooled
middle layer) and with XLCo's own vector (the `<s>` state of the layer it trains), and on
held-out pairs of the corpus itself (<workdir>/heldout_pairs: en-xx UI strings the arms never
train on: beyond the demo's 5,000-sentence cap, and neither side among the trained ones) with
both poolings; the random-init baseline (the same architecture and tokenizer, untrained) is
the fifth row. Writes <workdir>/study.md and <workdir>/study.json.
"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only feeds data here; keep it quiet

from absl import flags, logging

from xlm_jax import cli
from xlm_jax.config import sibling_config
from xlm_jax.errors import XlmJaxError
from xlm_jax.objectives.xlco import CrossLingualContrast
from xlm_jax.parallel.multihost import log
from xlm_jax.train.checkpoints import Checkpoints
from xlm_jax.train.evaluate import evaluate_checkpoint
from xlm_jax.train.loop import train_and_evaluate

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "configs")
ARMS = {"mlm": "demo", "mlm_tlm": "demo_tlm", "mlm_tlm_xlco": "demo_xlco", "mlm_adversarial": "demo_adversarial"}
LANGUAGES = "en,de,fr,es,it,pt,nl,ru,pl,tr,el,ar,zh_CN"   # the corpus's names of the demo's Tatoeba languages
EVALUATORS = {"tatoeba": "Tatoeba, mean-pooled middle layer (XTREME)", "tatoeba_first": "Tatoeba, <s> at XLCo's layer",
              "heldout": "held-out corpus pairs, mean-pooled middle layer",
              "heldout_first": "held-out corpus pairs, <s> at XLCo's layer"}
HELDOUT_PAIRS = 500     # per language



def define_flags() -> None:
    """The command's flags, defined when it runs (importing the module for its functions defines none)."""
    flags.DEFINE_string("workdir", None, "Directory of the study: one run directory per arm.")
    flags.DEFINE_list("arms", list(ARMS), f"Arms to run: {', '.join(ARMS)}.")
    flags.DEFINE_integer("steps", 1000, "Updates per arm (0 = the demo's 300).")
    flags.mark_flags_as_required(["workdir"])


def heldout_pairs(directory: str, cap: int) -> list[str]:
    """Writes <directory>/en-<xx>.tsv: up to HELDOUT_PAIRS of the built-in corpus's en-xx pairs
    past the first `cap` (data.max_sentences_per_language, all a run reads) whose sides are not
    among those; returns the files."""
    from xlm_jax.data.gettext_corpus import read_gettext_catalogs
    corpus, files = read_gettext_catalogs(), []
    os.makedirs(directory, exist_ok=True)
    trained = {line for lang in LANGUAGES.split(",") for line in corpus.mono.get(lang, [])[:cap]}
    for lang in LANGUAGES.split(",")[1:]:
        unseen = [(en, xx) for en, xx in corpus.parallel[("en", lang)][cap:]
                  if en not in trained and xx not in trained and "\t" not in en + xx]
        files.append(os.path.join(directory, f"en-{lang}.tsv"))
        with open(files[-1], "w", encoding="utf-8") as f:
            f.writelines(f"{en}\t{xx}\n" for en, xx in unseen[:HELDOUT_PAIRS])
    return files


def arm_config(arm: str, steps: int = 0, heldout: str = ""):
    """The arm's recipe on the study's languages, `steps` updates (0 = the demo's), evaluated on
    the `heldout` pair files too (comma-separated) when given."""
    config = sibling_config(os.path.join(CONFIGS, "demo.py"), ARMS[arm])
    config.data.shards = 4          # every arm's batches split the same way
    config.data.languages = LANGUAGES
    xlco_layer = str(CrossLingualContrast(config, 1.0, None).depth)
    tatoeba = config.evals.tatoeba
    config.evals.tatoeba_first = dict(tatoeba.to_dict(), pooling="first", layer=xlco_layer)
    if heldout:
        config.evals.heldout = dict(tatoeba.to_dict(), data=heldout, languages="", max_pairs=HELDOUT_PAIRS)
        config.evals.heldout_first = dict(config.evals.heldout.to_dict(), pooling="first", layer=xlco_layer)
    if steps:
        config.train.num_steps = steps
        config.train.warmup_steps = min(config.train.warmup_steps, steps // 10)
    config.evals.mlm.every_steps = 0
    return config


def run_arm(arm: str, workdir: str, steps: int, heldout: str) -> dict:
    """Trains the arm unless its last checkpoint is there, then evaluates it: the evaluators' records."""
    config = arm_config(arm, steps, heldout)
    checkpoints = Checkpoints(workdir, config.checkpoint.keep, async_save=False, read_only=True)
    done = checkpoints.latest_step() == config.train.num_steps
    checkpoints.close()
    if done:
        log(f"{arm}: trained already ({workdir})")
    else:
        train_and_evaluate(config, workdir)
    return evaluate_checkpoint(config, workdir, config.train.num_steps, list(EVALUATORS))


def table(records: dict) -> str:
    """Markdown: one row per arm and the random-init baseline, accuracy@1 per language and mean."""
    first = next(iter(records.values()))
    languages = list(first["per_language"])
    metric = "acc" if "acc" in first["per_language"][languages[0]] else next(iter(first["per_language"][languages[0]]))
    rows = {arm: record["per_language"] for arm, record in records.items()}
    rows["random init"] = first["random_init"]["per_language"]
    lines = [f"| arm | mean {metric} | " + " | ".join(languages) + " |",
             "|---|---|" + "---|" * len(languages)]
    for arm, per_language in rows.items():
        values = [per_language[lang][metric] for lang in languages]
        lines.append(f"| {arm} | **{sum(values) / len(values):.3f}** | "
                     + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    workdir, arms, steps = flags.FLAGS.workdir, flags.FLAGS.arms, flags.FLAGS.steps
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and jax log every save at INFO
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise XlmJaxError(f"--arms: unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
    cap = arm_config(arms[0]).data.max_sentences_per_language
    heldout = ",".join(heldout_pairs(os.path.join(workdir, "heldout_pairs"), cap))
    records = {arm: run_arm(arm, os.path.join(workdir, arm), steps, heldout) for arm in arms}
    steps = arm_config(arms[0], steps).train.num_steps
    report = f"# Retrieval (accuracy@1, both directions) after {steps} updates\n"
    for name, what in EVALUATORS.items():
        report += f"\n## {what}\n\n" + table({arm: evaluated[name] for arm, evaluated in records.items()}) + "\n"
    log(report)
    with open(os.path.join(workdir, "study.md"), "w") as f:
        f.write(report)
    with open(os.path.join(workdir, "study.json"), "w") as f:
        json.dump(records, f, indent=2, default=float)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
