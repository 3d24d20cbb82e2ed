"""configs/studies/lab.py: every arm is an ordinary run config that differs from the original only
as its name says, the corpus it prepares, and its findings and figures on made-up results."""
import importlib.util
import os

import pytest

from xlm_jax.studies.study import arm_configs, load_study

FILE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "studies", "lab.py"))


def lab():
    spec = importlib.util.spec_from_file_location("lab_study", FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flat(config) -> dict:
    """Every field of a run config but its evaluators, as dotted names."""
    out = {}
    for section, values in config.to_dict().items():
        if section == "evals":
            continue
        out.update({f"{section}.{k}": v for k, v in values.items()} if isinstance(values, dict) else {section: values})
    return out


@pytest.mark.parametrize("preset", ["small", "paper"])
def test_arms_differ_from_the_original_only_as_they_say(preset):
    configs = arm_configs(load_study(lab().get_config(preset)), FILE, "/studies/lab")
    original = flat(configs["original"])
    assert original["data.language_id_ranges"] and original["data.random_token_language"] == "any"
    assert original["model.hidden_size"] == 64 and original["model.num_heads"] == 1
    pieces = lab().PRESETS[preset]["pieces"]
    assert original["model.vocab_size"] == 5 + 2 * pieces
    differences = {arm: {k: v for k, v in flat(config).items() if v != original[k]} for arm, config in configs.items()}
    wide = lab().PRESETS[preset]["wide"]
    assert differences == {
        "original": {},
        "lang_pos": {"model.num_languages": 2, "model.language_specific_positions": True},
        "own_specials": {"data.shared_specials": False, "model.vocab_size": 1 + 2 * (pieces + 4)},
        "no_random": {"data.random_token_prob": 0.0, "data.mask_token_prob": 0.9},
        "overparam": {"model.hidden_size": wide, "model.num_heads": wide // 64, "model.mlp_dim": 4 * wide,
                      **({"train.learning_rate": 1e-4} if preset == "paper" else {})},
        "not_parallel": {"data.files": "en:/studies/lab/corpus/first.txt;qfe:/studies/lab/corpus/second.txt"},
    }
    for config in configs.values():
        assert config.evals.to_dict() == configs["original"].evals.to_dict()
        assert all(config.evals[e].every_steps == 0 for e in config.evals)   # evaluated once, at the end
    deep = {"small": 3, "paper": 8}[preset]
    assert configs["original"].evals.retrieval.layer.split(",")[:2] == [str(deep), "0"]
    assert configs["original"].evals.retrieval.pooling == "inner"


def test_prepare_writes_the_corpus_its_halves_and_unseen_held_out_pairs(tmp_path):
    source = tmp_path / "en.txt"
    source.write_text("".join(f"sentence {i}\n" for i in range(50)) + "sentence 3\n", encoding="utf-8")
    lab().prepare(str(tmp_path / "study"), 20, 6, source=str(source))
    corpus = tmp_path / "study" / "corpus"
    read = lambda name: (corpus / name).read_text(encoding="utf-8").splitlines()   # noqa: E731
    assert read("en.txt") == [f"sentence {i}" for i in range(20)]
    assert read("first.txt") + read("second.txt") == read("en.txt") and len(read("first.txt")) == 10
    held = read("heldout/qfe-en.tsv")
    assert held == [f"sentence {i}\tsentence {i}" for i in range(45, 50)]   # the last 6 but "sentence 3", trained on


def results(original: float, others: dict[str, float]) -> dict:
    """Made-up study results: every measure of an arm at `value`, its random init at 0.02."""
    def record(value, metric):
        values = {metric: value, f"{metric}_layer0": value / 2}
        per_layer = {"0": {"qfe": {metric: value / 2}}, "3": {"qfe": {metric: value}}}
        initial = {"0": {"qfe": {metric: 0.02}}, "3": {"qfe": {metric: 0.02}}}
        return {"per_language": {"qfe": values}, "chance": {"qfe": {k: 0.002 for k in values}},
                "random_init": {"per_language": {"qfe": {k: 0.02 for k in values}}, "details": {"per_layer": initial}},
                "details": {"per_layer": per_layer}}

    arms = {"original": original, **others}
    return {"arms": {arm: {"evals": {"retrieval": record(value, "acc"), "word_translation": record(value, "p1")}}
                     for arm, value in arms.items()}}


def test_findings_hold_each_claim_against_the_original():
    module = lab()
    found = module.findings(results(0.6, {"lang_pos": 0.1, "own_specials": 0.55, "not_parallel": 0.2}), 3)
    verdicts = {claim.split(" ")[0]: verdict for claim, _, verdict in found}
    assert [verdict for _, _, verdict in found] == ["holds", "holds", "does not hold", "holds"]
    assert "retrieval acc 0.600 (random init 0.020, chance 0.002)" in found[0][1]
    assert verdicts["Language-specific"] == "holds" and "multilinguality 0.075" in found[1][1]
    weak = module.findings(results(0.05, {"lang_pos": 0.01}), 3)
    assert weak[0][2] == "does not hold" and weak[1][2].startswith("unclear")


def test_figures(tmp_path):
    files = lab().figures(results(0.6, {"lang_pos": 0.1}), str(tmp_path), 3)
    assert files == ["multilinguality.png", "retrieval_by_layer.png", "word_translation_by_layer.png"]
    assert all((tmp_path / name).stat().st_size > 1000 for name in files)
