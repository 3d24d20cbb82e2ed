"""Demo: a small XLM-R-style multilingual MLM, offline on 2 CPU cores in a few minutes.

  python -m xlm_jax.main --config=configs/demo.py --workdir=runs/demo

Trains on the machine's own gettext translation catalogs (/usr/share/locale: real
human translations of UI strings, ~100+ languages, naturally imbalanced), with a
SentencePiece unigram vocabulary trained from alpha=0.3 temperature-sampled text.
Pass --config.data.corpus_dir=DIR to use a directory of <lang>.txt files instead.
"""
from xlm_jax.config import default_config
from xlm_jax.evaluation.suites import demo_suite


def get_config():
    config = default_config()
    m = config.model
    m.num_layers, m.hidden_size, m.num_heads, m.mlp_dim = 3, 256, 4, 1024
    m.vocab_size = 8002
    m.dropout_rate = m.attention_dropout_rate = 0.0  # a short run learns faster without it

    d = config.data
    d.seq_len = 64
    d.max_sentences_per_language = 5000
    d.tokenizer_sentences = 100_000
    d.eval_sentences_per_language = 100
    d.max_eval_languages = 8

    t = config.train
    t.num_steps = 300
    t.batch_size = 32
    t.learning_rate = 1e-3
    t.warmup_steps = 30
    t.log_every = 25

    config.evals = demo_suite(mlm_every_steps=150)   # held-out MLM while training; the rest on --mode=evaluate

    config.checkpoint.every_steps = 150
    config.mesh.rules = "dp"
    return config
