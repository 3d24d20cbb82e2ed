"""InfoXLM base (Chi et al. 2021): MMLM + TLM + XLCo, continued from XLM-R base.

  python -m xlm_jax.main --config=configs/infoxlm_base.py --workdir=gs://bucket/infoxlm \\
      --config.init_from=hf:/path/to/xlm-roberta-base \\
      --config.data.corpus_dir=/path/to/cc100_and_parallel --distributed

Recipe (../shared/REFERENCES.md): from XLM-R base's weights, 200k updates; every update sums
one batch of each objective (`objective_schedule = "sum"`, weights 1). MMLM on 512-token
blocks (alpha 0.3); TLM on `<s> src </s></s> tgt </s>` with continuous positions, no language
embeddings, each side cut to 254 tokens; XLCo on the `<s>` state of layer 8 of 12, a momentum
(0.9999) key encoder, a queue of 131,072 keys, temperature 0.25, no L2 normalization, both
directions. Adam (0.9, 0.98), eps 1e-6, lr 2e-4 with polynomial decay after 10k warmup,
weight decay 0.01, clipping 1.0, dropout 0; batch 2048 per objective.

Normalization, which the reference leaves to its summed-gradient division: we weight the
mean losses, loss = MMLM + TLM + XLCo, each averaged over its own masked tokens or queries
(the reference divides the sum by masked tokens + XLCo sentences, which weights XLCo by its
share of that count).

What this recipe aligns, measured at small scale (docs/alignment.md): trained from scratch on
the demo's model, this XLCo (`<s>`, momentum encoder, queue) retrieves translations no better
than random weights; in-batch contrast of mean-pooled vectors with a shared encoder does
(configs/demo_align.py). InfoXLM starts from XLM-R, whose states already align, and is kept
as the paper has it; to train the vector the retrieval evaluators score instead, pass
--config.xlco.key_encoder=shared --config.xlco.pooling=mean --config.xlco.queue_size=0
--config.xlco.normalize=True --config.xlco.temperature=0.05 (LaBSE / mSimCSE style).

Not reproduced: the reference masks XLCo's inputs too and packs two pairs per example; our
XLCo sentences are unmasked, one pair per row, at data.seq_len. The queue starts empty and
fills over its first 32 updates (131,072 / 4,096 keys), instead of being pre-filled.
"""
from xlm_jax.config import sibling_config


def get_config():
    config = sibling_config(__file__, "xlmr_base")    # the model it continues, XLM-R base
    config.model.dropout_rate = config.model.attention_dropout_rate = 0.0

    config.objectives.update(mlm=1.0, tlm=1.0, xlco=1.0)
    config.objective_schedule = "sum"
    config.tlm.positions = "continuous"
    x = config.xlco
    x.layer, x.momentum, x.queue_size, x.temperature = 8, 0.9999, 131_072, 0.25
    x.pooling, x.key_encoder = "cls", "momentum"
    x.projection, x.normalize, x.batch_negatives = False, False, False

    t = config.train
    t.num_steps = 200_000
    t.batch_size = 2048
    t.grad_accum_steps = 4        # 512 sequences of each objective per microbatch
    t.learning_rate = 2e-4
    t.warmup_steps = 10_000
    t.schedule = "polynomial"     # and XLM-R base's Adam (0.9, 0.98), eps 1e-6, decay 0.01, clip 1.0
    return config
