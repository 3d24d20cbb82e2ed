"""--preset takes XLM-R's model and sequence length from its recipe; flags given on the command
line still win."""
from xlm_jax.benchmarks.train_step import PRESET_FIELDS, sizes

FLAG_DEFAULTS = {"layers": 6, "hidden": 256, "heads": 4, "ffn": 1024, "vocab": 32000, "remat": "none",
                 "dtype": "float32", "seq": 128}


def test_presets_are_the_papers_models_at_seq_512_in_bf16():
    assert set(FLAG_DEFAULTS) == set(PRESET_FIELDS)
    # Conneau et al. 2020, table 7; remat as the recipes set it.
    assert sizes("xlmr_base", FLAG_DEFAULTS, set()) == {
        "layers": 12, "hidden": 768, "heads": 12, "ffn": 3072, "vocab": 250_002,
        "remat": "dots_with_no_batch_dims_saveable", "dtype": "bfloat16", "seq": 512}
    assert sizes("xlmr_large", FLAG_DEFAULTS, set()) == {
        "layers": 24, "hidden": 1024, "heads": 16, "ffn": 4096, "vocab": 250_002, "remat": "full",
        "dtype": "bfloat16", "seq": 512}


def test_flags_on_the_command_line_override_the_preset_and_no_preset_keeps_the_flags():
    given = {**FLAG_DEFAULTS, "layers": 2, "seq": 64}
    chosen = sizes("xlmr_large", given, {"layers", "seq"})
    assert (chosen["layers"], chosen["seq"], chosen["hidden"], chosen["vocab"]) == (2, 64, 1024, 250_002)
    assert sizes("", FLAG_DEFAULTS, set()) == FLAG_DEFAULTS
