"""XLM-R large (Conneau et al. 2020): 24 layers, hidden 1024, 16 heads, FFN 4096, vocab 250,002.

  python -m xlm_jax.main --config=configs/xlmr_large.py --workdir=gs://bucket/xlmr_large \\
      --config.data.corpus_dir=/path/to/cc100 --distributed

The recipe of configs/xlmr_base.py at the large size, with fairseq's RoBERTa large
schedule (peak lr 4e-4, 30k warmup steps) and full rematerialization to fit
activations of 24 layers. Parameters: ~560M. As base, 8 microbatches of 1,024 sequences:
compiled for 8 devices with fsdp, 28 GiB of temporaries per device (216 GiB without).
"""
import importlib.util
import os


def _base_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xlmr_base.py")
    spec = importlib.util.spec_from_file_location("xlmr_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    config = _base_config()
    m = config.model
    m.num_layers, m.hidden_size, m.num_heads, m.mlp_dim = 24, 1024, 16, 4096
    m.remat = "full"
    config.train.learning_rate = 4e-4
    config.train.warmup_steps = 30_000
    return config
