"""Demo of XLM's MLM + TLM: the demo model trained on monolingual blocks and translation pairs.

  python -m xlm_jax.main --config=configs/demo_tlm.py --workdir=runs/demo_tlm

configs/demo.py's model, corpus and 300 steps, with each update summing MLM on 16 blocks and
TLM on 16 pairs of the built-in corpus (its English-xx gettext translations), `<s> src </s></s>
tgt </s>` masked over both sides with continuous positions: as many sequences per update as
the demo's 32. Runs on 2 CPU cores in about the demo's time (README).
"""
from xlm_jax.config import sibling_config


def get_config():
    config = sibling_config(__file__, "demo")
    config.data.shards = 4                 # divides every objective's batch
    config.objectives.update(mlm=1.0, tlm=1.0)
    config.mlm.batch_size = config.tlm.batch_size = 16
    return config
