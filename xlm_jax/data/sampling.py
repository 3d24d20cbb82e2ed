"""Temperature sampling of languages: q_i = n_i^alpha / sum_j n_j^alpha (XLM, XLM-R, mBERT).

alpha < 1 flattens the data distribution so low-resource languages are seen more
often than their share of the text: XLM-R uses 0.3, XLM 0.5, mBERT 0.7. n_i counts
sentences or tokens (`data.sampling_unit`). Optional per-language caps and floors
(`data.language_caps`, `data.language_floors`, e.g. "en:0.2,sw:0.01") bound q_i; the
other languages share the rest in proportion to their temperature q_i. Language pairs (the
TLM and pair streams) are sampled the same way by their counts of translation pairs, with
the same alpha and no bounds.
"""
import math

from xlm_jax.errors import ConfigError, DataError


def temperature_probs(counts: dict[str, int], alpha: float) -> dict[str, float]:
    """Sampling probability of each language (or language pair); alpha=1 is proportional, alpha=0 uniform."""
    if not counts:
        raise DataError("no languages to sample from; the corpus is empty")
    empty = sorted(lang for lang, n in counts.items() if n <= 0)
    if empty:
        raise DataError(f"language(s) {', '.join(empty)} have no sentences; add text for them or remove "
                        "their files from the corpus dir")
    # In log space so n^alpha cannot overflow for web-scale counts.
    logs = {lang: alpha * math.log(n) for lang, n in counts.items()}
    top = max(logs.values())
    weights = {lang: math.exp(v - top) for lang, v in logs.items()}
    total = math.fsum(weights.values())
    return {lang: w / total for lang, w in weights.items()}


def parse_language_probs(text: str, field: str) -> dict[str, float]:
    """"en:0.2,sw:0.01" -> {"en": 0.2, "sw": 0.01}; ConfigError naming `field` and the bad entry."""
    if not isinstance(text, str):
        raise ConfigError(f"config field `{field}`: got {text!r}; use a string like \"en:0.2,sw:0.01\"")
    probs = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        lang, sep, value = (part.strip() for part in entry.partition(":"))
        try:
            prob = float(value) if sep and lang else math.nan
        except ValueError:
            prob = math.nan
        if not 0 <= prob <= 1:
            raise ConfigError(f"config field `{field}`: bad entry {entry!r}; use LANG:PROB with PROB in "
                              f"[0, 1], comma-separated, e.g. \"en:0.2,sw:0.01\"")
        if lang in probs:
            raise ConfigError(f"config field `{field}`: language {lang!r} is listed twice")
        probs[lang] = prob
    return probs


def check_caps_and_floors(caps: dict[str, float], floors: dict[str, float]) -> None:
    """The checks that need no corpus: floors fit in 1 and no floor is above its language's cap."""
    if math.fsum(floors.values()) > 1 + 1e-9:
        raise ConfigError(f"config field `data.language_floors`: the floors sum to "
                          f"{math.fsum(floors.values()):.4g} > 1")
    for lang in sorted(set(caps) & set(floors)):
        if floors[lang] > caps[lang]:
            raise ConfigError(f"config field `data.language_floors`: {lang} floor {floors[lang]} is above "
                              f"its cap {caps[lang]} in data.language_caps")


def bound_probs(probs: dict[str, float], caps: dict[str, float], floors: dict[str, float]) -> dict[str, float]:
    """q'_i = clamp(s * q_i, floor_i, cap_i) with the one s that makes sum q'_i = 1.

    So bounded languages sit at their bound and the others keep their ratios. Exact:
    sum_i clamp(s * q_i) is piecewise linear and non-decreasing in s, with breakpoints
    at floor_i / q_i and cap_i / q_i.
    """
    for field, given in (("data.language_caps", caps), ("data.language_floors", floors)):
        unknown = sorted(set(given) - set(probs))
        if unknown:
            raise ConfigError(f"config field `{field}`: no training text for {', '.join(unknown)}; "
                              f"languages of the corpus: {', '.join(sorted(probs))}")
    check_caps_and_floors(caps, floors)
    if not caps and not floors:
        return dict(probs)
    lo = {lang: floors.get(lang, 0.0) for lang in probs}
    hi = {lang: max(caps.get(lang, 1.0), lo[lang]) for lang in probs}
    if math.fsum(hi.values()) < 1 - 1e-9:
        raise ConfigError(f"config field `data.language_caps`: every language is capped and the caps sum "
                          f"to {math.fsum(hi.values()):.4g} < 1; raise a cap or leave a language uncapped")

    def total(s: float) -> float:
        return math.fsum(min(max(s * q, lo[lang]), hi[lang]) for lang, q in probs.items())

    breaks = sorted({0.0} | {b / q for lang, q in probs.items() if q > 0 for b in (lo[lang], hi[lang])})
    below = 0.0
    for point in breaks:
        if total(point) >= 1:
            break
        below = point
    low_total, high_total = total(below), total(point)
    s = point if high_total == low_total else below + (1 - low_total) * (point - below) / (high_total - low_total)
    bounded = {lang: min(max(s * q, lo[lang]), hi[lang]) for lang, q in probs.items()}
    norm = math.fsum(bounded.values())
    return {lang: p / norm for lang, p in bounded.items()}


def language_probs(counts: dict[str, int], alpha: float, caps: str = "", floors: str = "") -> dict[str, float]:
    """Temperature probabilities, then the `data.language_caps` / `data.language_floors` bounds."""
    return bound_probs(temperature_probs(counts, alpha), parse_language_probs(caps, "data.language_caps"),
                       parse_language_probs(floors, "data.language_floors"))


def expected_epochs(probs: dict[str, float], blocks: dict[str, int], examples: int) -> dict[str, float]:
    """Expected passes over each language's packed train blocks when `examples` blocks are drawn."""
    return {lang: probs[lang] * examples / max(blocks[lang], 1) for lang in probs}


def sampling_table(counts: dict[str, int], probs: dict[str, float], *, unit: str = "sentences",
                   blocks: dict[str, int] | None = None, examples: int = 0, label: str = "language") -> str:
    """Per language (most text first): n_i, data share p_i, sampling probability q_i and, given the
    packed train blocks per language and the run's `examples` (steps * batch size), expected epochs.
    `label` names what is sampled (e.g. "pair" for language pairs "en-sw")."""
    total = sum(counts.values())
    epochs = expected_epochs(probs, blocks, examples) if blocks is not None else None
    width = max(8, len(label), *(len(lang) for lang in counts))
    header = f"{label:<{width}} {unit:>14} {'p_i':>8} {'q_i':>8}"
    lines = [header + (f" {'blocks':>10} {'epochs':>9}" if epochs else "")]
    for lang in sorted(counts, key=lambda lang: (-counts[lang], lang)):
        line = f"{lang:<{width}} {counts[lang]:>14,} {counts[lang] / total:>8.4f} {probs[lang]:>8.4f}"
        lines.append(line + (f" {blocks[lang]:>10,} {epochs[lang]:>9.3g}" if epochs else ""))
    footer = f"{'total':<{width}} {total:>14,} {1:>8.4f} {1:>8.4f}"
    lines.append(footer + (f" {sum(blocks.values()):>10,}" if epochs else ""))
    if epochs:
        lines.append(f"epochs = q_i * {examples:,} blocks drawn (train.num_steps * train.batch_size) / the "
                     f"language's packed train blocks")
    return "\n".join(lines)
