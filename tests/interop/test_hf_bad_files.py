"""A transformers directory whose weights cannot be read: one line naming the file and why."""
import os

import numpy as np
import pytest

from xlm_jax.errors import CheckpointError
from xlm_jax.interop.hf import read_hf_weight_names, read_hf_weights


def _safetensors_dir(tmp_path, keep_bytes=None):
    from safetensors.numpy import save_file
    path = tmp_path / "model.safetensors"
    save_file({"roberta.embeddings.word_embeddings.weight": np.ones((64, 32), np.float32)}, str(path))
    if keep_bytes is not None:
        data = path.read_bytes()
        path.write_bytes(data[:keep_bytes if keep_bytes >= 0 else len(data) + keep_bytes])
    return tmp_path


def test_a_truncated_safetensors_file_is_named_in_one_line(tmp_path):
    directory = _safetensors_dir(tmp_path, keep_bytes=-1000)   # the header intact, the tensors cut short
    message = (rf"^{tmp_path}/model.safetensors: not a readable safetensors file \(.*; 7,\d{{3}} bytes\): the file "
               r"is cut short or damaged; copy it again from the model's source$")
    with pytest.raises(CheckpointError, match=message):
        read_hf_weight_names(str(directory))   # what init_from=hf:DIR reads first
    with pytest.raises(CheckpointError, match=message):
        read_hf_weights(str(directory))


def test_a_safetensors_file_cut_inside_its_header_is_named_too(tmp_path):
    directory = _safetensors_dir(tmp_path, keep_bytes=20)
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a readable safetensors file \(.*; 20 bytes\)"):
        read_hf_weight_names(str(directory))


class _RunsCode:
    """A pickle that would run a command when loaded (the attack weights_only refuses)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_a_pickle_weights_only_refuses_is_named_and_runs_nothing(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "the-pickle-ran"
    torch.save({"roberta.embeddings.word_embeddings.weight": torch.ones(4, 4), "payload": _RunsCode(str(marker))},
               tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: refused to unpickle it: it holds objects other "
                                              r"than tensors, which a pickle would run as code, and nothing of it "
                                              r"was executed \(torch.load with weights_only=True: .*\); use a "
                                              r"model.safetensors"):
        read_hf_weights(str(tmp_path))
    assert not marker.exists()
