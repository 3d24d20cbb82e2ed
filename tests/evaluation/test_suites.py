"""The recipes' evaluator sets: complete options, and inputs that exist in the offline data."""
import pytest

from xlm_jax.evaluation.registry import build_evaluators
from xlm_jax.evaluation.suites import demo_suite, xtreme_suite


@pytest.mark.parametrize("suite", [demo_suite, xtreme_suite])
def test_every_entry_is_complete_and_its_inputs_check_out(suite, shared_data):
    evaluators = build_evaluators(suite(str(shared_data)))
    assert [e.name for e in evaluators if e.options.every_steps] == ["mlm"]   # only MLM while training
    for evaluator in evaluators:
        assert set(evaluator.options) >= {"kind", "every_steps", "random_init_baseline"}
        evaluator.check()


def test_options_left_at_their_defaults_can_still_be_overridden():
    suite = demo_suite()
    suite.xnli.steps = 10          # not set by the suite: present at its default
    suite.tatoeba.every_steps = 50
    evaluators = {e.name: e for e in build_evaluators(suite)}
    assert evaluators["tatoeba"].options.every_steps == 50 and evaluators["xnli"].options.steps == 10
