"""A study: a grid of ordinary runs (arms) on one recipe, the evaluators applied to each, one report.

A study file (configs/studies/<name>.py) builds a `Study` for a preset and hands it to
`study_config`, which gives config_flags what it asks for:

  --config=configs/studies/emerging.py:small                       the study (--mode=study)
  --config=configs/studies/emerging.py:small/no_anchors@runs/emerging  one arm's run config
                                                                    (--mode=train; @ the study's directory)

so every arm is an ordinary, resumable `--mode=train` run directory that can run on any
host. An arm is the base recipe with dotted-field overrides (`{"model.num_layers": 4}`);
the study's evaluators replace the recipe's. Values may name `{study}` (the study's
directory) and `{data}` (the evaluation data, $XLM_JAX_EVAL_DATA). An arm may start from
another arm's final weights (`start_from="base"`: the runner exports that arm as a
transformers directory and sets `init_from`) or from a given model (`start_from="hf:DIR"`).
Every arm's config is built and validated before any arm starts, so a typo in the last
arm fails in seconds, naming the arm and the field.
"""
import dataclasses
import difflib
import importlib.util
import os
import shlex
from typing import Any, Callable

import ml_collections

from xlm_jax import config as config_lib
from xlm_jax.errors import ConfigError, XlmJaxError

STUDY_PRESETS = ("small", "paper")


@dataclasses.dataclass
class Arm:
    """One run of the grid: the base recipe with `overrides` (dotted config field -> value)."""
    name: str
    description: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    start_from: str = ""          # "" (from scratch), another arm's name, or "hf:DIR"
    train: bool = True            # False: evaluate the model it starts from as it is (a "before" row)
    base: str = ""                # a recipe in configs/ other than the study's base


@dataclasses.dataclass
class Study:
    """What a study file builds for a preset.

    evals: evaluator name -> options (as in config.evals), applied to every arm's final checkpoint.
    headline: (evaluator, per-language metric, "higher" | "lower"[, language]) the report tabulates
      (the mean over languages, or the one language named) and plots.
    prepare: writes files the arms read (e.g. a corpus cut from the built-in catalogs) under the
      study directory; called before any arm starts, and must be idempotent.
    findings: results -> [(the paper's claim, what this study measured, "holds" | "does not hold" |
      "unclear")], the report's comparison with the paper.
    plots: extra figures: (results, directory) -> [PNG file names].
    """
    name: str
    title: str
    preset: str
    base: str                     # the recipe in configs/ every arm starts from, e.g. "demo"
    arms: list[Arm]
    evals: dict[str, dict]
    headline: list[tuple[str, ...]]
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)   # every arm's, before its own
    prepare: Callable[[str], None] | None = None
    findings: Callable[[dict], list[tuple[str, str, str]]] | None = None
    plots: Callable[[dict, str], list[str]] | None = None
    paper: str = ""               # the seed paper, cited in the report
    notes: str = ""               # what the preset is (scale, data), for the report


def study_config(build: Callable[[str], Study], arg: str, file: str) -> ml_collections.ConfigDict:
    """get_config() of a study file: `arg` is "<preset>" (the study) or "<preset>/<arm>@<study dir>"
    (that arm's run config, its `{study}` paths in that directory)."""
    preset, _, arm = (arg or "small").partition("/")
    arm, _, study_dir = arm.partition("@")
    if preset not in STUDY_PRESETS:
        raise ConfigError(f"{file}: preset {preset!r}; the presets are {', '.join(STUDY_PRESETS)} "
                          f"(--config={file}:small)")
    if arm:
        if not study_dir:
            raise ConfigError(f"--config={file}:{arg}: say where the study lives: {preset}/{arm}@DIR "
                              f"(the arm runs in DIR/{arm})")
        study = build(preset)
        return arm_config(study, find_arm(study, arm), study_dir, file)
    config = ml_collections.ConfigDict()
    config.study = ml_collections.ConfigDict({"file": os.path.abspath(file), "preset": preset, "arms": "",
                                              "start_model": ""})
    return config


def load_study(study_config_dict: ml_collections.ConfigDict) -> Study:
    """The Study of a `--mode=study` config (its file's builder called again for the preset), with
    `study.start_model` (an "hf:DIR" for arms that start from the study's given model) applied."""
    s = study_config_dict.study
    spec = importlib.util.spec_from_file_location(f"xlm_jax_study_{os.path.basename(s.file)[:-3]}", s.file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    study = module.study(s.preset)
    if s.start_model:
        if not s.start_model.startswith("hf:"):
            raise ConfigError(f"config field `study.start_model`: got {s.start_model!r}; give hf:DIR "
                              "(a transformers XLM-R or BERT directory)")
        for arm in study.arms:
            if arm.start_from.startswith("hf:"):
                arm.start_from = s.start_model
    if s.arms:
        wanted = [name.strip() for name in s.arms.split(",") if name.strip()]
        for name in wanted:
            find_arm(study, name)
        study.arms = [arm for arm in study.arms if arm.name in wanted]
    return study


def find_arm(study: Study, name: str) -> Arm:
    for arm in study.arms:
        if arm.name == name:
            return arm
    raise ConfigError(f"study `{study.name}`: no arm {name!r}; its arms: {', '.join(a.name for a in study.arms)}")


def _configs_dir(file: str) -> str:
    """configs/, the parent of configs/studies/ where study files live."""
    return os.path.dirname(os.path.dirname(os.path.abspath(file)))


def _resolve(value, study_dir: str):
    if isinstance(value, str):
        from xlm_jax.evaluation.suites import DATA
        return value.replace("{study}", study_dir).replace("{data}", DATA)
    if isinstance(value, dict):
        return {key: _resolve(item, study_dir) for key, item in value.items()}
    return value


def set_field(config: ml_collections.ConfigDict, field: str, value, where: str) -> None:
    """config.<field> = value for a dotted field that must exist (`where` names the arm in errors)."""
    parts = field.split(".")
    node = config
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            close = difflib.get_close_matches(part, list(node), n=1) if isinstance(node, ml_collections.ConfigDict) else []
            near = f"; did you mean `{'.'.join(parts[:i] + close)}`?" if close else ""
            raise ConfigError(f"{where}: config field `{field}` does not exist{near} "
                              "(every field, with its default: xlm_jax/config.py)")
        if i < len(parts) - 1:
            node = node[part]
    try:
        node[parts[-1]] = value
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: config field `{field}`: {value!r} does not fit ({error})") from None


def arm_config(study: Study, arm: Arm, study_dir: str, file: str) -> ml_collections.ConfigDict:
    """The arm's run config: the base recipe, the study's and the arm's overrides, the study's
    evaluators (only those run, each once, at the last step), validated; errors name the arm."""
    where = f"study `{study.name}` ({study.preset}), arm `{arm.name}`"
    base = arm.base or study.base
    config = config_lib.sibling_config(os.path.join(_configs_dir(file), f"{base}.py"), base)
    config.evals = ml_collections.ConfigDict()
    from xlm_jax.evaluation.registry import build_evaluators, evaluator_options   # evaluators bring jax
    from xlm_jax.train.builder import validate
    for name, options in study.evals.items():
        try:
            config.evals[name] = evaluator_options(**_resolve(options, study_dir))
        except XlmJaxError as error:
            raise ConfigError(f"{where}: evaluator `{name}`: {error}") from None
    for field, value in {**study.overrides, **arm.overrides}.items():
        set_field(config, field, _resolve(value, study_dir), where)
    if arm.start_from:
        config.init_from = (f"hf:{os.path.join(study_dir, arm.start_from, EXPORT_DIR)}"
                            if not arm.start_from.startswith("hf:") else arm.start_from)
    try:
        validate(config)               # the engine's sections: schema, data, objectives
        build_evaluators(config.evals)  # each evaluator's options
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    return config


EXPORT_DIR = "export"   # <arm>/export: the arm's final weights as a transformers directory, for arms started from it


def arm_configs(study: Study, file: str, study_dir: str) -> dict[str, ml_collections.ConfigDict]:
    """Every arm's run config, each built and validated (and its evaluators' inputs checked)
    before any arm starts; an arm starting from another must come after it."""
    configs, names = {}, set()
    for arm in study.arms:
        if arm.start_from and not arm.start_from.startswith("hf:") and arm.start_from not in names:
            raise ConfigError(f"study `{study.name}`, arm `{arm.name}`: start_from={arm.start_from!r} names no "
                              f"earlier arm; arms before it: {', '.join(sorted(names)) or '(none)'}")
        if arm.start_from == "hf:":
            raise ConfigError(f"study `{study.name}` ({study.preset}), arm `{arm.name}` starts from a model you give: "
                              "--config.study.start_model=hf:DIR (a transformers XLM-R or BERT directory)")
        if not arm.train and not arm.start_from:
            raise ConfigError(f"study `{study.name}`, arm `{arm.name}`: train=False evaluates the model the arm "
                              "starts from; give start_from (an earlier arm or hf:DIR)")
        configs[arm.name] = arm_config(study, arm, study_dir, file)
        names.add(arm.name)
    return configs


def check_evaluator_inputs(study: Study, configs: dict) -> None:
    """Reads and checks every evaluator's data files up front (a missing file fails before training)."""
    from xlm_jax.evaluation.registry import build_evaluators
    for name, config in configs.items():
        for evaluator in build_evaluators(config.evals):
            try:
                evaluator.check()
            except XlmJaxError as error:
                raise type(error)(f"study `{study.name}`, arm `{name}`: {error}") from None


def train_command(file: str, preset: str, arm: Arm, study_dir: str) -> str:
    """The arm as one ordinary command: run it on any host (arms that start from another arm need
    that arm's export first: `--mode=export_hf --workdir=<study>/<arm> --export_dir=<study>/<arm>/export`)."""
    shown = os.path.relpath(file) if os.path.abspath(file).startswith(os.getcwd() + os.sep) else file
    flags = [f"--config={shown}:{preset}/{arm.name}@{study_dir}",
             f"--workdir={os.path.join(study_dir, arm.name)}"]
    return "python -m xlm_jax.main --mode=train " + " ".join(shlex.quote(flag) for flag in flags)
