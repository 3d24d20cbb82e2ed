"""Which of the run's languages an evaluation's language is, and what encoding it takes.

A run's language i (the `language_ids` value i) is position i of its corpus's sorted
languages (xlm_jax/data/prepare.py); the run records that list in <workdir>/languages.json.
Evaluation data names languages by other codes: Tatoeba and NTREX by ISO 639-3 ("deu",
"cmn", "swh", "zho-CN"), XNLI, POS and the mono/parallel files by ISO 639-1 ("de", "sw"),
the built-in gettext corpus by locale ("de", "zh_CN", "pt_BR"). `resolve_language` maps a
code to the run's language: the same name; else the same ISO 639-1 language and region
("zho-CN" is "zh_CN"); else the same ISO 639-1 language ("cmn" is the run's "zh_CN" when
that is its only Chinese).

Text of a run language is tokenized by `tokenizer.for_language(name)` and fed with that
language's id. A model whose tokenizer gives each language its own ids
(data.language_id_ranges) or that has per-language layers or positions
(model.language_specific_layers, model.language_specific_positions) cannot encode a language
the run did not have: the evaluation refuses it before it starts.
Any other model encodes such a language as every model did before runs recorded their
languages: the shared tokenizer and language id 0; a model without language embeddings or
id ranges encodes every language so (its vectors do not depend on the language).
"""
import dataclasses
import json
import os
import re

import jax

from xlm_jax.errors import ConfigError, DataError
from xlm_jax.jsonfiles import read_json_object
from xlm_jax.workdir import write_atomically

LANGUAGES_FILE = "languages.json"   # {"languages": [...]}: the run's language names in id order

# ISO 639-3 (and 639-2) codes of the Tatoeba and NTREX languages that have an ISO 639-1 code.
ISO_639_3_TO_1 = {
    "afr": "af", "amh": "am", "ara": "ar", "arb": "ar", "aze": "az", "bel": "be", "ben": "bn", "bos": "bs",
    "bre": "br", "bul": "bg", "cat": "ca", "ces": "cs", "cha": "ch", "cmn": "zh", "cor": "kw", "cym": "cy",
    "dan": "da", "deu": "de", "ell": "el", "eng": "en", "epo": "eo", "est": "et", "eus": "eu", "fao": "fo",
    "fas": "fa", "fin": "fi", "fra": "fr", "fry": "fy", "gla": "gd", "gle": "ga", "glg": "gl", "hau": "ha",
    "heb": "he", "hin": "hi", "hrv": "hr", "hun": "hu", "hye": "hy", "ido": "io", "ile": "ie", "ina": "ia",
    "ind": "id", "isl": "is", "ita": "it", "jav": "jv", "jpn": "ja", "kat": "ka", "kaz": "kk", "khm": "km",
    "kor": "ko", "kur": "ku", "lat": "la", "lit": "lt", "lvs": "lv", "mal": "ml", "mar": "mr", "mkd": "mk",
    "mon": "mn", "msa": "ms", "nep": "ne", "nld": "nl", "nno": "nn", "nob": "nb", "oci": "oc", "pes": "fa",
    "pol": "pl", "por": "pt", "ron": "ro", "rus": "ru", "slk": "sk", "slv": "sl", "spa": "es", "sqi": "sq",
    "srp": "sr", "swa": "sw", "swe": "sv", "swh": "sw", "tam": "ta", "tat": "tt", "tel": "te", "tgl": "tl",
    "tha": "th", "tuk": "tk", "tur": "tr", "uig": "ug", "ukr": "uk", "urd": "ur", "uzb": "uz", "vie": "vi",
    "xho": "xh", "yid": "yi", "yor": "yo", "zho": "zh", "zsm": "ms", "zul": "zu",
}
_CODE = re.compile(r"([A-Za-z]+)(?:[_-]([A-Za-z0-9]+))?")


def _normalized(code: str) -> tuple[str, str]:
    """(ISO 639-1 language where there is one, lowercase region or script) of a code:
    "zho-CN" -> ("zh", "cn"), "deu" -> ("de", ""), "sr_Latn" -> ("sr", "latn")."""
    match = _CODE.fullmatch(code.strip())
    if not match:
        return code.strip().lower(), ""
    base = match.group(1).lower()
    return ISO_639_3_TO_1.get(base, base), (match.group(2) or "").lower()


def resolve_language(code: str, run_languages) -> tuple[str, int] | None:
    """(the run's name, its language index) of evaluation language `code`; None if the run has none of it.

    The same name first, then the same language and region, then the same language: the run's
    language named by the bare code ("de" over "de_AT"), else its only variant. Several variants
    and none bare ("pt_BR" and "pt_PT" for "por") is a ConfigError: no guess is made.
    """
    run_languages = list(run_languages)
    if code in run_languages:
        return code, run_languages.index(code)
    wanted = _normalized(code)
    same = [name for name in run_languages if _normalized(name) == wanted]
    if not same:
        same = [name for name in run_languages if _normalized(name)[0] == wanted[0]]
        bare = [name for name in same if not _normalized(name)[1]]
        same = bare or same
    if len(same) > 1:
        raise ConfigError(f"evaluation language {code!r} could be any of the run's {', '.join(same)}; name the "
                          "language exactly as the run does (e.g. a file pair 'a.zh_CN|b.en', or a "
                          "`languages` option 'zh_CN-en')")
    return (same[0], run_languages.index(same[0])) if same else None


def per_language_model(model_config, tokenizer) -> bool:
    """Whether the model needs to know each token's language: per-language token ids, layers or positions."""
    return (bool(tokenizer.languages) or model_config.language_specific_layers > 0
            or model_config.language_specific_positions)


def uses_languages(model_config, tokenizer) -> bool:
    """Whether the language changes anything: per-language ids, or language embeddings (XLM)."""
    return model_config.num_languages > 0 or bool(tokenizer.languages)


@dataclasses.dataclass(frozen=True)
class LanguageInputs:
    """How to encode one language's text: its tokenizer and its `language_ids` value."""
    tokenizer: object
    language_id: int


def language_inputs(subject, language: str | None) -> LanguageInputs:
    """The tokenizer and language id of `language`'s text for `subject`. A model that does not use
    languages, and a language the run did not have (or None), get the shared tokenizer and id 0,
    as before runs recorded their languages; a per-language model gets a DataError for those."""
    if not uses_languages(subject.model_config, subject.tokenizer):
        return LanguageInputs(subject.tokenizer, 0)
    found = resolve_language(language, subject.languages) if language is not None else None
    if found is not None:
        name, index = found
        return LanguageInputs(subject.tokenizer.for_language(name), index)
    if per_language_model(subject.model_config, subject.tokenizer):
        known = ", ".join(subject.languages) or "none recorded: no languages.json in its run directory"
        what = f"language {language!r} is not" if language is not None else "text of no named language is not"
        raise DataError(f"{what} one of the model's languages ({known}); a model with per-language token "
                        "ids (data.language_id_ranges), layers or positions (model.language_specific_layers, "
                        "model.language_specific_positions) encodes only those: name the text's language")
    return LanguageInputs(subject.tokenizer, 0)


def check_evaluation_languages(evaluators, model_config, tokenizer, run_languages) -> None:
    """ConfigError, before anything runs, for an evaluator's language that a per-language model
    cannot encode, or that matches several of the run's languages."""
    if not uses_languages(model_config, tokenizer):
        return
    for evaluator in evaluators:
        codes = evaluator.languages_used()
        missing = [code for code in codes if resolve_language(code, run_languages) is None]
        if missing and per_language_model(model_config, tokenizer):
            raise ConfigError(f"config field `{evaluator.field(evaluator.language_option)}`: the model cannot "
                              f"encode {', '.join(missing)}, which its run did not have (its languages: "
                              f"{', '.join(run_languages) or 'none recorded'}); a model with per-language "
                              "token ids or layers encodes only its own languages: evaluate those only")


def read_run_languages(workdir: str) -> tuple[str, ...]:
    """The run's languages in id order, from <workdir>/languages.json; () for a run from before
    the file existed."""
    path = os.path.join(workdir, LANGUAGES_FILE)
    if not os.path.exists(path):
        return ()
    fix = "delete it and resume the run to write it again"
    languages = read_json_object(path, fix, DataError).get("languages")
    if not isinstance(languages, list):
        raise DataError(f"{path}: expected {{\"languages\": [...]}}; {fix}")
    return tuple(languages)


def record_run_languages(workdir: str, languages, log=print) -> None:
    """Writes <workdir>/languages.json (process 0, atomically) when it is missing or names other
    languages (a resumed run on another corpus: its language ids now mean these)."""
    languages = list(languages)
    if jax.process_index() != 0 or list(read_run_languages(workdir)) == languages:
        return
    path = os.path.join(workdir, LANGUAGES_FILE)
    if os.path.exists(path):
        log(f"{path}: the corpus's languages changed; language ids now follow {', '.join(languages)}")
    write_atomically(path, (json.dumps({"languages": languages}, ensure_ascii=False) + "\n").encode("utf-8"))
