"""A damaged model file is one line naming the file and saying it is truncated or corrupt, not the reader's own
error (`cannot reshape array of size ...`, `SafetensorError: ... incomplete metadata`), which names neither."""

import os
import shutil

import numpy as np
import pytest

from rlhf.models import load_policy
from rlhf.tiny import build_causal_lm


@pytest.fixture
def saved_model(tokenizer, tmp_path):
    out = tmp_path / "model"
    build_causal_lm(tokenizer, seed=0).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("keep", [0.5, 100, 0], ids=["half", "cut-header", "empty"])
def test_a_truncated_safetensors_file_is_named(saved_model, tmp_path, keep):
    cut = tmp_path / "cut"
    shutil.copytree(saved_model, cut)
    weights = cut / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError) as err:
        load_policy(str(cut))
    message = str(err.value)
    assert message.startswith(f"model='{cut}': weight file '{weights}' is truncated or corrupt ("), message
    assert "\n" not in message


def test_an_intact_model_still_loads(saved_model):
    assert load_policy(str(saved_model)).config.n_layer == 2


def write_gguf(path):
    """A small GGUF file (metadata and two tensors; not a model transformers can build, which is not needed to
    test the reader's errors)."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(16)
    writer.add_block_count(1)
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.random((100, 16), dtype=np.float32))
    writer.add_tensor("output.weight", rng.random((100, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("keep", [0.8, 200], ids=["tensors-cut", "metadata-cut"])
def test_a_truncated_gguf_file_is_named(tmp_path, keep):
    from rlhf.gguf import load_gguf, load_gguf_config, load_gguf_tokenizer

    full = write_gguf(tmp_path / "full.gguf")
    cut = tmp_path / "cut.gguf"
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    size = os.path.getsize(cut)
    for load in (load_gguf_config, load_gguf, load_gguf_tokenizer):
        with pytest.raises(ValueError) as err:
            load(cut, field="base_model")
        message = str(err.value)
        assert message.startswith(
            f"base_model='{cut}': the GGUF file is truncated or corrupt ({size} bytes"
        ), message
        assert "\n" not in message
    with pytest.raises(ValueError, match=r"^model='.*cut\.gguf': the GGUF file is truncated or corrupt"):
        load_policy(str(cut))


def test_an_intact_gguf_files_other_errors_are_left_alone(tmp_path):
    """Not every failure is damage: a readable file that describes no buildable model keeps its own error."""
    from rlhf.gguf import load_gguf_config

    full = write_gguf(tmp_path / "full.gguf")
    with pytest.raises(Exception) as err:
        load_gguf_config(full)
    assert "truncated or corrupt" not in str(err.value)
