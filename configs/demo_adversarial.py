"""Demo of language-adversarial training (DANN through gradient reversal) beside MLM.

  python -m xlm_jax.main --config=configs/demo_adversarial.py --workdir=runs/demo_adversarial

configs/demo.py with a language discriminator on the mean-pooled last layer of MLM's own
batch (one forward pass serves both), behind a gradient-reversal layer whose lambda rises
by DANN's schedule to 0.1 (adversarial.lambda_max; at 1.0 the reversed gradient overwhelms a
model this small). `adversarial/accuracy` in the logs should fall toward the largest
language's share of the batches as the encoder learns to hide the language.
"""
from xlm_jax.config import sibling_config


def get_config():
    config = sibling_config(__file__, "demo")
    config.data.shards = 4                 # as the other demo variants, for comparable batches
    config.objectives.update(mlm=1.0, adversarial=1.0)
    config.adversarial.lambda_max = 0.1
    return config
