"""The data section's checks that need the data modules' own rules (the schema checks the rest).

xlm_jax/modes/prepare.validate runs them after the schema's, before any text is read.
"""
from xlm_jax.config import one_of, require
from xlm_jax.data.language_ranges import check_config as check_language_id_ranges
from xlm_jax.data.sampling import check_caps_and_floors, parse_language_probs
from xlm_jax.data.sources import BAD_LINE_POLICIES, parse_files_spec
from xlm_jax.data.synthetic import check_config as check_synthetic_pairs


def check_data(config, reads_pairs: bool) -> None:
    """Language caps and floors, bad-line policy, file lists, per-language ids, vocabulary
    extension and synthetic pairs; `reads_pairs`: an active objective reads translation pairs (TLM, XLCo)."""
    d = config.data
    check_caps_and_floors(parse_language_probs(d.language_caps, "data.language_caps"),
                          parse_language_probs(d.language_floors, "data.language_floors"))
    one_of(config, "data.on_bad_line", BAD_LINE_POLICIES)
    parse_files_spec(d.files)
    check_language_id_ranges(config)
    require(not d.extend_vocab_pieces or config.init_from, "data.extend_vocab_pieces",
            f"got {d.extend_vocab_pieces}, but vocabulary extension adds to an imported model's "
            "vocabulary: set --config.init_from=hf:DIR, or leave extend_vocab_pieces at 0 (a run from "
            "scratch trains its own tokenizer of model.vocab_size ids on the corpus)")
    require(not d.extend_vocab_languages or d.extend_vocab_pieces, "data.extend_vocab_languages",
            f"got {d.extend_vocab_languages!r} with data.extend_vocab_pieces=0: it picks the text the new "
            "pieces are trained on; set data.extend_vocab_pieces too, or leave it empty")
    check_synthetic_pairs(d, reads_pairs)
    require(d.shared_specials or not reads_pairs, "data.shared_specials",
            "got False, but an objective reads translation pairs (TLM, XLCo), whose layouts put one <s> and "
            "</s> around both languages; train those with shared specials, or MLM alone")
