"""TensorBoard scalars without the tensorboard package: the events are what TensorBoard reads."""
import importlib.util

import pytest


def _events(logdir):
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    files = sorted(logdir.glob("events.out.tfevents.*"))
    assert len(files) == 1
    return [event_pb2.Event.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(str(files[0]))]


def test_scalars_are_written_as_tensorboard_scalar_summaries(tmp_path):
    import numpy as np

    from xlm_jax.train.metrics import SummaryWriter

    writer = SummaryWriter(str(tmp_path), enabled=True)
    writer.scalars(3, {"train/loss": 6.5, "train/mfu": np.float32(0.25)})
    writer.scalars(7, {"train/loss": 5.25})
    writer.close()
    scalars = [(event.step, value.tag, value.metadata.plugin_data.plugin_name,
                float(np.frombuffer(value.tensor.tensor_content, np.float32)[0]))
               for event in _events(tmp_path) for value in event.summary.value]
    assert scalars == [(3, "train/loss", "scalars", 6.5), (3, "train/mfu", "scalars", 0.25),
                       (7, "train/loss", "scalars", 5.25)]


def test_tensorboard_reads_them_where_it_is_installed(tmp_path):
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("tensorboard is not installed: pip install -e '.[test]' (training does not need it)")
    import tensorflow as tf
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    from xlm_jax.train.metrics import SummaryWriter

    writer = SummaryWriter(str(tmp_path), enabled=True)
    writer.scalars(2, {"eval/mean_loss": 4.5})
    writer.close()
    accumulator = EventAccumulator(str(tmp_path))   # what TensorBoard's scalars dashboard loads
    accumulator.Reload()
    assert list(accumulator.PluginTagToContent("scalars")) == ["eval/mean_loss"]
    assert [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors("eval/mean_loss")] \
        == [(2, 4.5)]


def test_a_disabled_writer_writes_nothing(tmp_path):
    from xlm_jax.train.metrics import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"), enabled=False)
    writer.scalars(1, {"train/loss": 1.0})
    writer.close()
    assert not (tmp_path / "tb").exists()
