"""Sharding is layout, not math, for each objective alone: TLM, XLCo, the language discriminator
and pair classification train on 8 fake devices in fsdp_tp (2, 2, 2) (batch over data x fsdp,
weights over fsdp and tensor) exactly like on one device, to float32 summation-order noise,
with dropout on; XLCo's queue and momentum encoder included.

MLM alone is tests/parallel/test_layouts.py; all five mixed, on dp, fsdp and fsdp_tp, is
test_mixing.py (each objective's loss is compared there on every layout too; compiling every
objective alone on every layout would cost minutes). Two steps each: XLCo's first step
contrasts against an empty queue (loss 0), the second against the first step's keys.
"""
import jax
import numpy as np
import pytest

from tests.helpers import cached_train_setup
from tests.objectives.objective_setups import (assert_same_steps, objectives_config, perturbed_params, run_steps,
                                              step_batches)

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices: "
                                "XLA_FLAGS=--xla_force_host_platform_device_count=8 (repo-root conftest)")


@pytest.mark.parametrize("name", ["tlm", "xlco", "adversarial", "pair_classification"])
def test_each_objective_alone_trains_on_fsdp_tp_like_on_one_device(name):
    config = objectives_config((name,), dropout=0.1)
    base_setup = cached_train_setup(config)
    assert [o.name for o in base_setup.objectives] == [name]
    params, batches = perturbed_params(base_setup, seed=1), step_batches(base_setup, 2, seed=2)
    _, base = run_steps(base_setup, base_setup.state_from(params), batches)
    setup = cached_train_setup(config, (2, 2, 2), "fsdp_tp")
    _, history = run_steps(setup, setup.state_from(params), batches)
    for _, metrics, _ in base:                        # the objective is really there and trains
        assert int(metrics["nonfinite"]) == 0 and np.isfinite(metrics[f"{name}/loss"])
    if name == "xlco":
        assert float(base[0][1]["xlco/loss"]) == 0.0 and float(base[1][1]["xlco/loss"]) > 0.1
    assert float(base[1][1]["grad_norm"]) > 0
    assert_same_steps(history, base, config.train.learning_rate)
