"""Where a model under evaluation comes from: a run's checkpoint, a transformers
directory, or random weights (the baseline).

The random-init baseline is the same architecture and tokenizer with random weights. A
short MLM run can score *below* it on retrieval (subword overlap alone gives a random
encoder its score; training washes that out at first), so every evaluation reports it
beside the model's number.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlm_jax.data.tokenizers import load_tokenizer, tokenizer_from_hf_directory
from xlm_jax.evaluation.evaluator import Subject
from xlm_jax.evaluation.languages import read_run_languages
from xlm_jax.interop.hf import import_hf
from xlm_jax.models.masked_lm import MaskedLM
from xlm_jax.parallel.mesh import on_mesh
from xlm_jax.train.checkpoints import load_config, restore_params


def _boxed_init(model_config):
    model = MaskedLM(model_config)
    ids = jnp.full((1, 8), 4, jnp.int32)
    kwargs = {"language_ids": jnp.zeros_like(ids)} if model_config.num_languages else {}

    def init(key):
        return model.init({"params": key, "dropout": key}, ids, jnp.zeros((1, 1), jnp.int32), **kwargs)["params"]
    return init


def params_shardings(model_config, mesh, rules):
    """Where each MaskedLM parameter lives on `mesh`, by the model's logical axes."""
    boxed = jax.eval_shape(_boxed_init(model_config), jax.random.key(0))
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)


def random_init_params(model_config, mesh, rules, seed: int):
    """MaskedLM params from `seed`, created sharded on `mesh`."""
    init = _boxed_init(model_config)
    return jax.jit(on_mesh(lambda key: nn.meta.unbox(init(key)), mesh, rules),
                   out_shardings=params_shardings(model_config, mesh, rules))(jax.random.key(seed))


def random_init_subject(subject: Subject) -> Subject:
    """`subject`'s architecture, tokenizer and mesh with random weights (seed: subject.seed)."""
    params = random_init_params(subject.model_config, subject.mesh, subject.rules, subject.seed)
    return dataclasses.replace(subject, params=params, step=0, label="random-init")


def checkpoint_subject(config, workdir: str, mesh, rules, step: int | None = None, log=print) -> Subject:
    """Checkpoint `step` (default: the newest readable) of a run directory, with its tokenizer and
    languages (<workdir>/languages.json; none for a run from before it was written)."""
    params, step = restore_params(config, workdir, mesh, rules, step, log=log)
    return Subject(config.model, params, load_tokenizer(workdir), mesh, rules, step=step, seed=config.train.seed,
                   languages=read_run_languages(workdir))


def imported_subject(directory: str, mesh, rules, seed: int = 0, log=print) -> Subject:
    """A transformers XLM-R / BERT directory at step 0. An encoder-only checkpoint has no MLM head:
    it gets a random one (seed), which only MLM-based evaluations use."""
    imported = import_hf(directory)
    params = imported.params   # already padded to this model's vocabulary layout
    if not imported.has_head:
        log(f"{directory} has no MLM head: a random one is added (only MLM evaluations use it)")
        params = {**params, "lm_head": jax.device_get(random_init_params(imported.model, mesh, rules, seed)["lm_head"])}
    params = jax.device_put(params, params_shardings(imported.model, mesh, rules))
    return Subject(imported.model, params, tokenizer_from_hf_directory(directory), mesh, rules, step=0, seed=seed)


def load_subject(source: str, mesh, rules, log=print) -> Subject:
    """A run directory's newest readable checkpoint, or "hf:DIR", placed on `mesh`."""
    if source.startswith("hf:"):
        return imported_subject(source.removeprefix("hf:"), mesh, rules, log=log)
    return checkpoint_subject(load_config(source), source, mesh, rules, log=log)
