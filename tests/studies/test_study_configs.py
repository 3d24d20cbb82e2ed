"""The shipped studies: every arm of every preset is a valid run config that differs from the
others as the study says, and the paper presets compile at their own batch."""
import importlib.util
import os

import jax
import pytest

from xlm_jax.objectives.registry import build_objectives, streams
from xlm_jax.studies.study import arm_configs, load_study
from xlm_jax.train.aot import lower_train_step

STUDIES = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "studies")
NAMES = ("emerging", "lowres", "bytes", "objectives")


def configs_of(name: str, preset: str, **study_fields) -> dict:
    file = os.path.abspath(os.path.join(STUDIES, f"{name}.py"))
    spec = importlib.util.spec_from_file_location(f"study_{name}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(preset)
    config.study.update(study_fields)
    return arm_configs(load_study(config), file, "/studies/x")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("preset", ["small", "paper"])
def test_every_arm_of_every_study_is_a_valid_run_config(name, preset):
    fields = {"start_model": "hf:/models/xlm-roberta-base"} if (name, preset) == ("lowres", "paper") else {}
    configs = configs_of(name, preset, **fields)
    assert len(configs) >= 4
    for config in configs.values():
        assert all(config.evals[e].every_steps == 0 for e in config.evals)   # evaluated once, at the end


def test_emerging_arms_differ_only_in_what_they_share():
    configs = configs_of("emerging", "small")
    shared = configs["shared"]
    assert not shared.data.language_id_ranges and shared.model.language_specific_layers == 0
    assert [configs[a].model.language_specific_layers for a in ("no_anchors", "sep_bottom1", "sep_bottom2")] == [0, 1, 2]
    for arm in ("no_anchors", "sep_bottom1", "sep_bottom2"):
        assert configs[arm].data.language_id_ranges and configs[arm].model.vocab_size == 5 + 2 * 3998
    assert configs["domains"].data.files.startswith("en:") and "mono/en.txt" in configs["domains"].data.files
    for config in configs.values():
        assert (config.model.num_layers, config.model.hidden_size, config.train.num_steps) == (3, 256, 800)


def test_lowres_arms_add_one_step_each_from_the_base():
    configs = configs_of("lowres", "small")
    assert list(configs) == ["base", "mlm", "tlm", "xlco", "adversarial", "balanced", "synthetic"]
    active = {arm: sorted(o.name for o in build_objectives(c)) for arm, c in configs.items()}
    assert active["mlm"] == ["mlm"] and active["tlm"] == ["mlm", "tlm"] and active["xlco"] == ["mlm", "tlm", "xlco"]
    assert active["adversarial"] == active["balanced"] == active["synthetic"] == ["adversarial", "mlm", "tlm", "xlco"]
    assert configs["base"].init_from == "" and "sw:" not in configs["base"].data.files
    for arm in list(configs)[1:]:
        assert configs[arm].init_from == "hf:/studies/x/base/export" and configs[arm].data.extend_vocab_pieces == 1000
    assert configs["balanced"].data.language_floors == "sw:0.5" and not configs["adversarial"].data.language_floors
    assert configs["synthetic"].data.synthetic_ratio == 0.3 and not configs["balanced"].data.synthetic_pairs


def test_the_objective_study_arms_share_model_data_and_tokens_per_update():
    configs = configs_of("objectives", "small")
    trained = {arm: sorted(o.name for o in build_objectives(config)) for arm, config in configs.items()}
    assert trained == {"mlm": ["mlm"], "mlm_tlm": ["mlm", "tlm"], "infoxlm": ["mlm", "tlm", "xlco"],
                       "contrastive": ["xlco"], "labse": ["xlco"], "mlm_contrastive": ["mlm", "xlco"]}
    for config in configs.values():
        assert config.model.to_dict() == configs["mlm"].model.to_dict()
        assert config.train.num_steps == 300 and config.data.languages == configs["mlm"].data.languages
        tokens = sum(spec.batch_size * (2 if spec.kind == "pairs" else 1) * config.data.seq_len
                     for spec in streams(build_objectives(config)))
        assert tokens == 4096                      # one budget: input tokens per update, padding included
        assert config.evals.tatoeba_first.pooling == "first" and config.evals.tatoeba_first.layer == "2,3"
    xlco = {arm: configs[arm].xlco for arm in ("infoxlm", "contrastive", "labse", "mlm_contrastive")}
    assert xlco["infoxlm"].key_encoder == "momentum" and xlco["infoxlm"].momentum == 0.9999
    assert (xlco["infoxlm"].pooling, xlco["infoxlm"].temperature, xlco["infoxlm"].normalize) == ("cls", 0.25, False)
    assert (xlco["contrastive"].key_encoder, xlco["contrastive"].pooling, xlco["contrastive"].layer) == ("shared", "mean", 2)
    assert (xlco["labse"].pooling, xlco["labse"].layer, xlco["labse"].margin) == ("cls", 3, 0.3)
    assert xlco["mlm_contrastive"].pooling == "mean" and configs["mlm_contrastive"].objectives.mlm == 1.0


@pytest.mark.parametrize("name, arm", [("emerging", "sep_bottom2"), ("bytes", "bytes_en")])
def test_paper_presets_compile_at_their_own_batch_on_8_devices(name, arm):
    config = configs_of(name, "paper")[arm]
    compiled = lower_train_step(config, jax.devices()[:8], languages=["de", "en"]).compile()
    assert compiled.memory_analysis().temp_size_in_bytes > config.train.batch_size * config.data.seq_len * 4 // 8
