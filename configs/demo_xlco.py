"""Demo of InfoXLM's recipe, MLM + TLM + XLCo, at the demo's scale.

  python -m xlm_jax.main --config=configs/demo_xlco.py --workdir=runs/demo_xlco

configs/demo.py's model, corpus and 300 steps; each update sums MLM on 8 blocks, TLM on 8
pairs and XLCo on 8 pairs (16 sentences, both directions): the demo's 32 sequences. XLCo
contrasts the `<s>` state of layer 2 of 3 (two thirds of the depth, as InfoXLM's 8 of 12)
against a queue of 1,024 keys. Changed from InfoXLM for a 300-step run: momentum 0.999
(MoCo's; 0.9999 would keep the key encoder at its initial weights: 0.9999^300 = 0.97),
L2-normalized vectors at temperature 0.1 (MoCo v2's practice; the unnormalized dot products
of a model this young saturate the softmax at 0.25), and the batch's other pairs as
negatives beside the queue's (with the queue alone, a young model, whose key encoder drifts
fast, learns to tell the step's keys from older ones instead of translations apart: its
retrieval accuracy stayed at chance). Runs on 2 CPU cores in about the demo's time.
"""
from xlm_jax.config import sibling_config


def get_config():
    config = sibling_config(__file__, "demo")
    config.data.shards = 4                 # divides every objective's batch
    config.objectives.update(mlm=1.0, tlm=1.0, xlco=1.0)
    config.mlm.batch_size = config.tlm.batch_size = config.xlco.batch_size = 8
    x = config.xlco
    x.queue_size, x.momentum, x.temperature, x.normalize, x.batch_negatives = 1024, 0.999, 0.1, True, True
    return config
