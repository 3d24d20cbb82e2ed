"""The data section's checks that need the data modules' own rules (the schema checks the rest).

xlm_jax/modes/prepare.validate runs them after the schema's, before any text is read.
"""
from xlm_jax.config import one_of, require
from xlm_jax.data.language_ranges import check_config as check_language_id_ranges
from xlm_jax.data.sampling import check_caps_and_floors, parse_language_probs
from xlm_jax.data.sources import BAD_LINE_POLICIES, parse_files_spec
from xlm_jax.data.synthetic import check_config as check_synthetic_pairs


def check_data(config, reads_pairs: bool) -> None:
    """Language caps and floors, bad-line policy, file lists, per-language ids and synthetic
    pairs; `reads_pairs`: an active objective reads translation pairs (TLM, XLCo)."""
    d = config.data
    check_caps_and_floors(parse_language_probs(d.language_caps, "data.language_caps"),
                          parse_language_probs(d.language_floors, "data.language_floors"))
    one_of(config, "data.on_bad_line", BAD_LINE_POLICIES)
    parse_files_spec(d.files)
    check_language_id_ranges(config)
    check_synthetic_pairs(d, reads_pairs)
    require(d.shared_specials or not reads_pairs, "data.shared_specials",
            "got False, but an objective reads translation pairs (TLM, XLCo), whose layouts put one <s> and "
            "</s> around both languages; train those with shared specials, or MLM alone")
