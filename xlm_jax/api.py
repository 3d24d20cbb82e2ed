"""The notebook surface: load a run directory, encode sentences, fill in masks.

    import xlm_jax
    model = xlm_jax.load("runs/demo")
    vectors = model.encode(["Hallo Welt", "Hello world"])        # [2, hidden], mean-pooled
    model.predict_masked("The capital of France is <mask>.")    # [(piece, prob), ...] per <mask>
"""

import jax
import jax.numpy as jnp
import numpy as np

from xlm_jax.data.tokenizers import TOKENIZER_FILES, Tokenizer, load_tokenizer, tokenizer_exists
from xlm_jax.errors import CheckpointError
from xlm_jax.interop.hf import export_hf, family_of_config
from xlm_jax.models.heads import MaskedLM
from xlm_jax.parallel.mesh import make_mesh
from xlm_jax.parallel.rules import logical_axis_rules
from xlm_jax.train.checkpoints import Checkpoints, abstract_with_shardings, load_config
from xlm_jax.train.optim import make_optimizer
from xlm_jax.train.state import state_shardings


class Model:
    """A trained MaskedLM with its tokenizer, on this process' devices."""

    def __init__(self, config, params, tokenizer: Tokenizer, step: int, workdir: str = ""):
        self.config, self.params, self.tokenizer, self.step = config, params, tokenizer, step
        self.workdir = workdir   # the run directory it was loaded from, if any
        self._module = MaskedLM(config.model)
        self._hidden = jax.jit(lambda p, ids: self._module.apply(
            {"params": p}, ids, output_hidden_states=True)[1])
        self._logits = jax.jit(lambda p, ids: self._module.apply({"params": p}, ids))

    def _batch(self, token_lists: list[np.ndarray]) -> np.ndarray:
        """<s> tokens </s>, truncated to the model's length, padded to the longest."""
        limit = self.config.model.max_len - 2
        t = self.tokenizer
        rows = [np.concatenate([[t.bos_id], ids[:limit], [t.eos_id]]) for ids in token_lists]
        batch = np.full((len(rows), max(map(len, rows))), t.pad_id, np.int32)
        for i, row in enumerate(rows):
            batch[i, :len(row)] = row
        return batch

    def encode(self, texts: list[str], layer: int = -1) -> np.ndarray:
        """Mean over the tokens (specials included, padding excluded) of one layer's states.

        layer: index into [embeddings, layer 1, ..., layer L]; -1 is the last layer.
        Middle layers (e.g. 7 of 12) transfer best for retrieval (XTREME's Tatoeba).
        """
        ids = self._batch(self.tokenizer.encode(list(texts)))
        hidden = np.asarray(self._hidden(self.params, ids)[layer], np.float32)
        mask = (ids != self.tokenizer.pad_id)[..., None]
        return (hidden * mask).sum(axis=1) / mask.sum(axis=1)

    def export_hf(self, directory: str, log=print) -> str:
        """Writes this model as a transformers directory (see xlm_jax.interop.hf.export_hf)."""
        export_hf(self.config.model, self.params, self.tokenizer, directory, log=log)
        return (f"exported step {self.step}" + (f" of {self.workdir}" if self.workdir else "")
                + f" to {directory} ({family_of_config(self.config.model).masked_lm})")

    def predict_masked(self, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """The top_k pieces and probabilities for each mask token in `text`: `<mask>`, or
        `[MASK]` for a WordPiece model (the tokenizer turns it into the mask id)."""
        t = self.tokenizer
        ids = self._batch([np.asarray(t.encode([text])[0], np.int32)])
        positions = np.flatnonzero(ids[0] == t.mask_id)
        if not positions.size:
            raise ValueError(f"text has no {t.id_to_piece(t.mask_id)}: {text!r}")
        probs = jax.nn.softmax(self._logits(self.params, ids)[0].astype(jnp.float32), axis=-1)
        probs = np.asarray(probs)[:, :self.config.model.vocab_size]   # the padding ids have prob 0
        results = []
        for position in positions:
            top = np.argsort(-probs[position])[:top_k]
            results.append([(t.id_to_piece(int(i)), float(probs[position, i])) for i in top])
        return results


def load(workdir: str, step: int | None = None, log=print) -> Model:
    """The params of checkpoint `step` of a run directory (default: the newest readable one;
    unreadable newer ones are logged and left in place)."""
    config = load_config(workdir)
    if not tokenizer_exists(workdir):
        raise CheckpointError(f"{workdir} has no tokenizer ({' / '.join(TOKENIZER_FILES)}): is it an xlm_jax "
                              "run directory?")
    tokenizer = load_tokenizer(workdir)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    mesh = make_mesh(config.mesh)
    rules = logical_axis_rules("dp")
    model, optimizer = MaskedLM(config.model), make_optimizer(config.train)
    abstract, shardings = state_shardings(model, optimizer, config, mesh, rules)
    checkpoints = Checkpoints(workdir, keep=config.checkpoint.keep, async_save=False, read_only=True)
    try:
        state, _ = checkpoints.restore(abstract_with_shardings(abstract, shardings), step, log=log)
    finally:
        checkpoints.close()
    return Model(config, state.params, tokenizer, int(state.step), workdir)
