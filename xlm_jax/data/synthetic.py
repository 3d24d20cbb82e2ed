"""Synthetic (e.g. back-translated) translation pairs: a pair source of their own, mixed into the
TLM and pair streams at a set ratio and tagged so that the losses reading pairs can down-weight them.

The framework reads such pairs as a corpus; making them (an MT system) is the user's business.
`data.synthetic_pairs` names TSV files with the syntax of data.files' pair entries
("en-sw:/bt/en-sw.tsv,/bt/more.tsv;en-yo:/bt/en-yo.tsv.gz"). They are read like pair files (the
same bad-line policy, shards, replication of small pairs, processes: xlm_jax.data.text) but kept
apart: they never feed MLM text or the tokenizer's sample (machine-made sentences are no
language's text), and both their languages must be languages the run trains on.

The mixing rule, per language pair i with R_i real and N_i synthetic pairs over all shards:
- which language pair an example comes from: q_i by data.alpha over R_i + N_i (every pair the
  run can read of it, as if the files were one);
- whether it is synthetic: with probability 1 when i has synthetic pairs only, 0 when it has real
  ones only, and with both, data.synthetic_ratio, or N_i / (R_i + N_i) when that is 0 (in
  proportion to their size, like ordinary pairs);
- its `pair_weight` (a field of every TLM and pair example while data.synthetic_pairs is set):
  1.0 real, data.synthetic_weight synthetic; TLM and XLCo weight each example's loss and
  normalizer by it, so 1.0 trains exactly as if the pairs were real.
xlm_jax.data.pipeline draws the source per example from the seed (stateless, so resumes agree).
"""
from xlm_jax.errors import ConfigError, DataError

FIELD = "data.synthetic_pairs"


def check_config(data_config, reads_pairs: bool) -> None:
    """The synthetic-pair fields alone and together (data/checks.py); `reads_pairs`: some active
    objective reads the TLM or pair stream."""
    from xlm_jax.data.sources import parse_files_spec

    d = data_config
    for key, _ in parse_files_spec(d.synthetic_pairs, FIELD):
        _require("-" in key, FIELD, f"{key!r} is a language, not a <src>-<tgt> pair; synthetic pairs are TSV "
                 "files of translations, e.g. \"en-sw:/bt/en-sw.tsv\" (monolingual text goes in data.files)")
    ratio, weight = d.synthetic_ratio, d.synthetic_weight
    _require(_number(ratio) and 0 <= ratio < 1, "data.synthetic_ratio",
             f"got {ratio!r}; the share of a language pair's examples drawn from its synthetic pairs must be "
             "in [0, 1): e.g. 0.3 = 3 in 10, 0 = in proportion to their size (a language pair with synthetic "
             "pairs only always draws them)")
    _require(_number(weight) and 0 < weight <= 1, "data.synthetic_weight",
             f"got {weight!r}; a synthetic pair's weight in the TLM and XLCo losses must be in (0, 1] "
             "(1 = like a real pair)")
    if not d.synthetic_pairs:
        for field, value, default in (("synthetic_ratio", ratio, 0.0), ("synthetic_weight", weight, 1.0)):
            _require(value == default, f"data.{field}", f"got {value!r}, but there is no synthetic source: set "
                     f"{FIELD} (e.g. \"en-sw:/bt/en-sw.tsv\") or leave data.{field} at {default}")
    _require(not d.synthetic_pairs or reads_pairs, FIELD,
             "synthetic pairs feed the TLM and pair streams, but no active objective reads pairs; turn one on "
             "(e.g. --config.objectives.tlm=1) or set data.synthetic_pairs=\"\"")


def check_languages(pairs, languages: list[str]) -> None:
    """Both languages of every synthetic pair are languages of the run (synthetic text adds none)."""
    for src, tgt in pairs:
        missing = [lang for lang in (src, tgt) if lang not in languages]
        if missing:
            raise DataError(f"{FIELD}: {src}-{tgt}: {', '.join(missing)} is not a language of this run "
                            f"({', '.join(languages)}); synthetic pairs never add a language's text, so give "
                            f"{', '.join(missing)} text (data.files, data.corpus_dir) or drop the entry")


def synthetic_fractions(pairs, real: dict, synthetic: dict, ratio: float) -> list[float]:
    """P(synthetic | language pair), aligned with `pairs`, by the module's rule."""
    fractions = []
    for pair in pairs:
        r, n = real.get(pair, 0), synthetic.get(pair, 0)
        fractions.append(float(n > 0) if not (r and n) else ratio or n / (r + n))
    return fractions


def effective_ratio(probs: list[float], fractions: list[float]) -> float:
    """The share of the pair streams' examples that are synthetic: sum_i q_i P(synthetic | i)."""
    return sum(q * fraction for q, fraction in zip(probs, fractions))


def mix_table(pairs, real: dict, synthetic: dict, probs: list[float], fractions: list[float], data_config) -> str:
    """The log's account of the mix: pairs read of each source and P(synthetic) per language pair,
    the totals and the effective ratio."""
    width = max(8, *(len(f"{src}-{tgt}") for src, tgt in pairs))
    lines = [f"{'pair':<{width}} {'real':>10} {'synthetic':>10} {'q_i':>8} {'P(synth)':>9}"]
    for pair, q, fraction in zip(pairs, probs, fractions):
        lines.append(f"{'-'.join(pair):<{width}} {real.get(pair, 0):>10,} {synthetic.get(pair, 0):>10,} "
                     f"{q:>8.4f} {fraction:>9.4f}")
    d = data_config
    lines.append(f"synthetic pairs read: {sum(synthetic.values()):,}, real pairs: {sum(real.values()):,}; "
                 f"effective ratio {effective_ratio(probs, fractions):.4f} of the TLM and pair examples, each "
                 f"weighted {d.synthetic_weight:g} (data.synthetic_ratio={d.synthetic_ratio:g}"
                 f"{', 0 = by size' if not d.synthetic_ratio else ''})")
    return "\n".join(lines)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config field `{field}`: {message}")
