"""transformers' XLM-R masked LM (Flax and PyTorch) as peers for the train-step benchmark.

Each peer builds `XLMRobertaForMaskedLM` / `FlaxXLMRobertaForMaskedLM` at the size of
our model config, randomly initialized (no network), and trains on the same batch as
ours: the same ids, and labels (-100 elsewhere) at the same masked positions. A step is
forward with labels + backward + global-norm clipping + AdamW with our train config's
lr, betas, eps and weight decay (not on biases or LayerNorm), dropout on.

The peers need the `hf` extra (transformers 4.57.6 is the last release with Flax models).
"""
import os

import numpy as np

from xlm_jax.extras import require

PEERS = ("hf_flax", "hf_torch")


def check_installed(name: str) -> None:
    """Raises MissingPackage before anything is built if peer `name` cannot run here."""
    for package in ("transformers", "torch") if name == "hf_torch" else ("transformers",):
        require(package, f"--compare={name}")


def hf_config(model_config):
    """The transformers XLMRobertaConfig of the same size and dropout as our model config."""
    transformers = require("transformers", "the hf_flax/hf_torch peers")
    m = model_config
    return transformers.XLMRobertaConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads, intermediate_size=m.mlp_dim, hidden_act="gelu",
        hidden_dropout_prob=m.dropout_rate, attention_probs_dropout_prob=m.attention_dropout_rate,
        max_position_embeddings=m.max_len + m.position_offset, type_vocab_size=m.type_vocab_size,
        initializer_range=m.initializer_range, layer_norm_eps=m.layer_norm_eps,
        pad_token_id=m.pad_token_id, bos_token_id=0, eos_token_id=2)


def hf_labels(batch: dict, vocab_size: int) -> np.ndarray:
    """[B, S] labels: the original id at every masked position, -100 elsewhere."""
    input_ids = np.asarray(batch["input_ids"])
    labels = np.full(input_ids.shape, -100, np.int64)
    weights = np.asarray(batch["masked_weights"]) > 0
    rows = np.broadcast_to(np.arange(input_ids.shape[0])[:, None], weights.shape)
    labels[rows[weights], np.asarray(batch["masked_positions"])[weights]] = (
        np.asarray(batch["masked_ids"])[weights])
    assert labels.max() < vocab_size
    return labels


def _no_decay(name: str) -> bool:
    return name.endswith("bias") or "LayerNorm" in name


def make_hf_flax(config, batch: dict):
    """Returns run(num_steps) -> last loss: jitted optax train steps of FlaxXLMRobertaForMaskedLM."""
    transformers = require("transformers", "--compare=hf_flax")
    import jax
    import optax
    import flax.traverse_util  # noqa: F401  (the submodule is not imported by `import flax`)
    import jax.numpy as jnp

    t = config.train
    model = transformers.FlaxXLMRobertaForMaskedLM(
        hf_config(config.model), input_shape=(1, config.data.seq_len), seed=0, dtype=jnp.float32)
    decay = lambda params: flax.traverse_util.unflatten_dict({
        path: not _no_decay("/".join(path)) and path[-1] != "scale"
        for path in flax.traverse_util.flatten_dict(params)})
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(t.learning_rate, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
                    mask=decay))
    input_ids = jnp.asarray(batch["input_ids"])
    attention_mask = jnp.asarray(np.asarray(batch["input_ids"]) != config.model.pad_token_id,
                                 jnp.int32)
    labels = jnp.asarray(hf_labels(batch, config.model.vocab_size), jnp.int32)

    def train_step(params, opt_state, rng):
        rng, dropout_rng = jax.random.split(rng)

        def loss_fn(p):
            logits = model(input_ids, attention_mask, params=p, dropout_rng=dropout_rng,
                           train=True)[0]
            # transformers' Flax models take no labels: the loss of its run_mlm_flax example.
            weights = (labels != -100).astype(jnp.float32)
            per_token = optax.softmax_cross_entropy_with_integer_labels(
                logits, jnp.where(labels == -100, 0, labels))
            return jnp.sum(per_token * weights) / jnp.sum(weights)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, rng, loss

    jitted = jax.jit(train_step, donate_argnums=(0, 1))
    state = (model.params, optimizer.init(model.params), jax.random.key(1))

    def run(num_steps):
        nonlocal state
        for _ in range(num_steps):
            *state, loss = jitted(*state)
        return float(loss)

    return run


def make_hf_torch(config, batch: dict):
    """Returns run(num_steps) -> last loss: eager PyTorch train steps of XLMRobertaForMaskedLM on CPU."""
    transformers, torch = require("transformers", "--compare=hf_torch"), require("torch", "--compare=hf_torch")
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    t = config.train
    model = transformers.XLMRobertaForMaskedLM(hf_config(config.model)).train()
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if not _no_decay(n)], "weight_decay": t.weight_decay},
         {"params": [p for n, p in named if _no_decay(n)], "weight_decay": 0.0}],
        lr=t.learning_rate, betas=(t.b1, t.b2), eps=t.eps)
    input_ids = torch.from_numpy(np.asarray(batch["input_ids"]).astype(np.int64))
    attention_mask = (input_ids != config.model.pad_token_id).long()
    labels = torch.from_numpy(hf_labels(batch, config.model.vocab_size))

    def run(num_steps):
        for _ in range(num_steps):
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return run


def make_peer(name: str, config, batch: dict):
    """run(num_steps) -> last loss for peer `name` (one of PEERS); returns when the steps are done."""
    if name == "hf_flax":
        return make_hf_flax(config, batch)
    if name == "hf_torch":
        return make_hf_torch(config, batch)
    raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
