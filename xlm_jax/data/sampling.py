"""Temperature sampling of languages: q_i = n_i^alpha / sum_j n_j^alpha (XLM, XLM-R, mBERT).

alpha < 1 flattens the data distribution so low-resource languages are seen more
often than their share of the text: XLM-R uses 0.3, XLM 0.5, mBERT 0.7.
"""
import math

from xlm_jax.errors import DataError


def temperature_probs(counts: dict[str, int], alpha: float) -> dict[str, float]:
    """Sampling probability of each language; alpha=1 is proportional, alpha=0 uniform."""
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


def sampling_table(counts: dict[str, int], alpha: float) -> str:
    """Per language (most text first): sentences n_i, data share p_i and sampling probability q_i."""
    probs = temperature_probs(counts, alpha)
    total = sum(counts.values())
    width = max(8, *(len(lang) for lang in counts))
    lines = [f"{'language':<{width}} {'sentences':>12} {'p_i':>8} {'q_i':>8}   (alpha={alpha})"]
    for lang in sorted(counts, key=lambda lang: (-counts[lang], lang)):
        lines.append(f"{lang:<{width}} {counts[lang]:>12,} {counts[lang] / total:>8.4f} {probs[lang]:>8.4f}")
    lines.append(f"{'total':<{width}} {total:>12,} {1:>8.4f} {1:>8.4f}")
    return "\n".join(lines)
