"""Language-adversarial training (DANN, as Keung et al. 2019 apply it to multilingual BERT).

A discriminator predicts each example's language from a pooled representation; between it
and the encoder sits a gradient-reversal layer, identity forward and -lambda x the gradient
backward. The discriminator learns to tell languages apart while the encoder learns to make
them indistinguishable; its accuracy falling toward chance (the largest language's share of
the batches) says the representation hides the language. lambda follows DANN's schedule
lambda_p = lambda_max (2 / (1 + exp(-10 p)) - 1), p the training progress, or is constant.

By default it reads MLM's batch (`adversarial.share_batch`): one forward pass serves both.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from xlm_jax.errors import ConfigError
from xlm_jax.models import flops as flops_lib
from xlm_jax.models.encoder import gelu, param_with_axes
from xlm_jax.objectives.base import Objective, StepContext

LAMBDA_SCHEDULES = ("dann", "constant")
POOLINGS = ("mean", "first")


@jax.custom_vjp
def reverse_gradient(x, scale):
    """Identity forward; the gradient times -scale backward (scale gets none)."""
    return x


def _reverse_forward(x, scale):
    return x, scale


def _reverse_backward(scale, grad):
    return -scale * grad, jnp.zeros_like(scale)


reverse_gradient.defvjp(_reverse_forward, _reverse_backward)


def dann_lambda(progress, lambda_max: float):
    """DANN's lambda_p = lambda_max * (2 / (1 + exp(-10 p)) - 1): 0 at the start, ~lambda_max from p = 0.5."""
    return lambda_max * (2.0 / (1.0 + jnp.exp(-10.0 * progress)) - 1.0)


class LanguageDiscriminator(nn.Module):
    """Pooled state -> dense -> GELU -> language logits."""
    hidden: int
    num_languages: int

    @nn.compact
    def __call__(self, pooled):
        init = nn.initializers.normal(0.02)
        h = nn.Dense(self.hidden, param_dtype=jnp.float32, kernel_init=param_with_axes(init, ("embed", None)),
                     bias_init=param_with_axes(nn.initializers.zeros, (None,)), name="dense")(pooled)
        return nn.Dense(self.num_languages, param_dtype=jnp.float32,
                        kernel_init=param_with_axes(init, (None, None)),
                        bias_init=param_with_axes(nn.initializers.zeros, (None,)), name="out")(gelu(h))


class LanguageAdversarial(Objective):
    name = "adversarial"
    stream_kind = "blocks"

    @classmethod
    def check(cls, config):
        o, layers = config.adversarial, config.model.num_layers
        cls.require(isinstance(o.layer, int) and 0 <= o.layer <= layers, "layer",
                    f"got {o.layer!r}; a layer in 1..{layers}, or 0 for the last")
        cls.require(o.pooling in POOLINGS, "pooling", f"got {o.pooling!r}; allowed values: {', '.join(POOLINGS)}")
        cls.require(o.lambda_schedule in LAMBDA_SCHEDULES, "lambda_schedule",
                    f"got {o.lambda_schedule!r}; allowed values: {', '.join(LAMBDA_SCHEDULES)}")
        cls.require(o.lambda_max >= 0, "lambda_max", f"got {o.lambda_max!r}; must be >= 0")
        cls.require(isinstance(o.hidden, int) and o.hidden >= 0, "hidden",
                    f"got {o.hidden!r}; the discriminator's hidden size, or 0 for model.hidden_size")
        cls.require(not (o.share_batch and config.objectives.get("mlm", 0) and o.batch_size), "batch_size",
                    f"got {o.batch_size}, but adversarial.share_batch reads MLM's batch; set "
                    "--config.adversarial.share_batch=False for a batch of its own, or batch_size=0")

    def __init__(self, config, weight, languages):
        super().__init__(config, weight, languages)
        if languages is not None and len(languages) < 2:
            raise ConfigError("config field `objectives.adversarial`: a language discriminator needs at least "
                              f"2 languages, the corpus has {len(languages)}")

    @property
    def batch_name(self):
        return "mlm" if self.options.share_batch and self.config.objectives.get("mlm", 0) else self.name

    @property
    def batch_size(self):
        if self.batch_name == "mlm":
            return self.config.mlm.batch_size or self.config.train.batch_size
        return super().batch_size

    @property
    def layer(self) -> int:
        return self.options.layer or self.config.model.num_layers

    def _discriminator(self):
        return LanguageDiscriminator(self.options.hidden or self.config.model.hidden_size, len(self.languages))

    def init_head(self, rng):
        return self._discriminator().init(rng, jnp.zeros((1, self.config.model.hidden_size)))["params"]

    def normalizer(self, batch):
        return jnp.asarray(batch["input_ids"].shape[0], jnp.float32)

    def strength(self, step):
        """lambda at update `step`."""
        if self.options.lambda_schedule == "constant":
            return jnp.asarray(self.options.lambda_max, jnp.float32)
        return dann_lambda(step / self.config.train.num_steps, self.options.lambda_max)

    def _pooled(self, states, input_ids):
        chosen = states[self.layer].astype(jnp.float32)
        if self.options.pooling == "first":
            return chosen[:, 0]
        mask = (input_ids != self.config.model.pad_token_id).astype(jnp.float32)[..., None]
        return (chosen * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)

    def loss_terms(self, ctx: StepContext, batch, extra):
        _, states = ctx.encode_batch(self.batch_name, batch)
        pooled = reverse_gradient(self._pooled(states, batch["input_ids"]), self.strength(ctx.step))
        logits = self._discriminator().apply({"params": ctx.params["objectives"][self.name]}, pooled)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["language"])
        correct = (jnp.argmax(logits, -1) == batch["language"]).astype(jnp.float32)
        return {"loss_sum": jnp.sum(losses), "correct": jnp.sum(correct)}, None

    def metrics(self, terms, normalizer, step):
        return {"loss": terms["loss_sum"] / normalizer, "accuracy": terms["correct"] / normalizer,
                "lambda": self.strength(step)}

    def flops(self):
        m, seq = self.config.model, self.config.data.seq_len
        hidden = self.options.hidden or m.hidden_size
        head = 6 * self.batch_size * (m.hidden_size * hidden + hidden * len(self.languages))
        if self.batch_name != self.name:    # MLM's forward and backward already count the encoder
            return {self.name: head}
        return {self.name: head + 3 * flops_lib.forward_flops_per_token(m, seq) * self.tokens_per_step()}

    def tokens_per_step(self):
        return 0 if self.batch_name != self.name else super().tokens_per_step()
