"""XLM-R base (Conneau et al. 2020): 12 layers, hidden 768, 12 heads, FFN 3072, vocab 250,002.

  python -m xlm_jax.main --config=configs/xlmr_base.py --workdir=gs://bucket/xlmr_base \\
      --config.data.corpus_dir=/path/to/cc100 --distributed

Recipe: from the XLM-R paper, sequences of 512 packed tokens, batch 8192, ~1.5M
updates, alpha = 0.3 temperature sampling over languages, dropout 0.1. The paper
does not publish its learning-rate schedule; we use fairseq's RoBERTa base recipe
at the same batch size (Liu et al. 2019, table 9): Adam (0.9, 0.98), eps 1e-6,
weight decay 0.01, peak lr 6e-4 after 24k warmup steps, then linear decay, and
InfoXLM's gradient clipping of 1.0. Parameters: ~278M (192M of them embeddings).

Memory and layout, from `--mode=plan` (README "Planning a run on a pod"): the batch of 8192
runs as 8 accumulated microbatches of 1,024 sequences (one update per step, the same loss
as one batch), sharded (`fsdp`). fsdp fits every target planned (peak per device 21.9 GiB
of 32 on a v4-32, 11.3 of 95 on a v5p-64, 6.2 of 16 on a v5e-64, 26.3 of 79 on 8 x H100)
and ties the best roofline MFU ceiling (98%, compute-bound; 96% on the v5e-64, where dp
has 98%), with less memory than data parallel (`dp`) where memory is short (dp: 20.5,
13.3, 9.6 and 29.8 GiB). Tensor parallelism (`fsdp_tp`) only adds all-reduces at this size.
Temporaries scale with the sequences per device: on fewer or smaller devices raise
--config.train.grad_accum_steps, on large pods lower it (fewer, bigger matmuls per step).
"""
from xlm_jax.config import default_config
from xlm_jax.evaluation.suites import xtreme_suite


def get_config():
    config = default_config()
    m = config.model
    m.num_layers, m.hidden_size, m.num_heads, m.mlp_dim = 12, 768, 12, 3072
    m.vocab_size = 250_002
    m.max_len = 512
    m.dropout_rate = m.attention_dropout_rate = 0.1
    m.dtype = "bfloat16"
    m.remat = "dots_with_no_batch_dims_saveable"

    d = config.data
    d.alpha = 0.3
    d.seq_len = 512
    d.tokenizer_sentences = 10_000_000
    d.eval_sentences_per_language = 1000
    d.eval_batches = 4

    t = config.train
    t.num_steps = 1_500_000
    t.batch_size = 8192
    t.grad_accum_steps = 8   # microbatches of 1,024 sequences: 128 per device on 8, 16 on 64 (see docstring)
    t.learning_rate = 6e-4
    t.warmup_steps = 24_000
    t.schedule = "polynomial"
    t.power = 1.0
    t.b1, t.b2, t.eps = 0.9, 0.98, 1e-6
    t.weight_decay = 0.01
    t.clip_norm = 1.0
    t.log_every = 100

    config.evals = xtreme_suite(mlm_every_steps=10_000)

    config.checkpoint.every_steps = 5000
    config.checkpoint.keep = 3
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, -1, 1   # the plans' best (docstring)
    config.mesh.rules = "fsdp"
    return config
