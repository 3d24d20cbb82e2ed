"""The objective study's arms are the demo recipes on one budget, and its table puts every arm
beside the random-init baseline."""
from xlm_jax.config import validate
from xlm_jax.objectives.registry import build_objectives, streams
from xlm_jax.studies.objectives import ARMS, arm_config, table


def test_every_arm_is_a_valid_config_of_the_same_model_data_and_sequences_per_update():
    configs = {arm: validate(arm_config(arm, steps=50)) for arm in ARMS}
    trained = {arm: sorted(o.name for o in build_objectives(config)) for arm, config in configs.items()}
    assert trained == {"mlm": ["mlm"], "mlm_tlm": ["mlm", "tlm"], "mlm_tlm_xlco": ["mlm", "tlm", "xlco"],
                       "mlm_adversarial": ["adversarial", "mlm"]}
    for config in configs.values():
        assert config.model.to_dict() == configs["mlm"].model.to_dict()
        assert (config.data.languages, config.data.seq_len, config.train.num_steps) == (
            configs["mlm"].data.languages, configs["mlm"].data.seq_len, 50)
        sequences = sum(spec.batch_size * (2 if spec.kind == "pairs" else 1)
                        for spec in streams(build_objectives(config)))
        assert sequences == 32                                   # the demo's, in every arm
        assert config.evals.tatoeba_first.pooling == "first" and config.evals.tatoeba_first.layer == "2"


def test_the_table_has_a_row_per_arm_and_the_random_init_baseline():
    def record(deu, fra):
        return {"per_language": {"deu": {"acc": deu}, "fra": {"acc": fra}}}
    records = {"mlm": {**record(0.1, 0.3), "random_init": record(0.05, 0.05)}, "mlm_tlm": record(0.2, 0.4)}
    lines = table(records).splitlines()
    assert lines[0] == "| arm | mean acc | deu | fra |"
    assert lines[2:] == ["| mlm | **0.200** | 0.100 | 0.300 |", "| mlm_tlm | **0.300** | 0.200 | 0.400 |",
                         "| random init | **0.050** | 0.050 | 0.050 |"]
