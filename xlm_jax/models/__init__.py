"""Pure flax.linen modules: the XLM-R encoder and its heads."""
