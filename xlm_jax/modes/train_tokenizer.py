"""`--mode=train_tokenizer`: train (or load) the run's tokenizer and check no language is starved.

  python -m xlm_jax.main --mode=train_tokenizer --config=configs/demo.py --workdir=runs/demo \
      --config.data.tokenizer=bpe

Reads the corpus as a training run does and gets the tokenizer as `prepare_data` would (so the
run that follows loads it), then prints xlm_jax/data/tokenizer_report.py's table per language
and writes it to workdir/tokenizer_report.json. No model, no accelerator, no distributed setup.
"""
import json
from typing import Callable

from etils import epath

from xlm_jax.data.prepare import train_or_load_tokenizer
from xlm_jax.data.text import read_text
from xlm_jax.data.tokenizer_report import REPORT_FILE, format_table, tokenizer_report
from xlm_jax.data.tokenizers import tokenizer_kind
from xlm_jax.modes.prepare import validate
from xlm_jax.workdir import make_workdir


def main(config, workdir: str, flags) -> None:
    del flags
    train_tokenizer(config, workdir)


def train_tokenizer(config, workdir: str, log: Callable[[str], None] = print) -> dict:
    """Validates the config, trains or loads the workdir's tokenizer, prints and writes the report."""
    validate(config)
    make_workdir(workdir)
    corpus = read_text(config, log=log)    # all shards, in this one process
    text = {}
    for lang in corpus.languages:
        held_out = corpus.own_held_out(lang)
        text[lang] = ("held-out", held_out) if held_out else ("training", corpus.own_train(lang))
    tokenizer = train_or_load_tokenizer(config, workdir, corpus, corpus.sentence_probs()[1], log)
    stats = tokenizer_report(tokenizer, text)
    log(f"tokenizer: {tokenizer_kind(tokenizer)}, {tokenizer.vocab_size} ids\n" + format_table(stats))
    path = epath.Path(workdir) / REPORT_FILE
    path.write_text(json.dumps({"tokenizer": tokenizer_kind(tokenizer), "vocab_size": tokenizer.vocab_size,
                                "languages": stats}, indent=2, ensure_ascii=False), encoding="utf-8")
    log(f"report: {path}")
    return stats
