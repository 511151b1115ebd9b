import pytest

from rlhf.hub import load_model_config
from rlhf.tiny import build_causal_lm, build_tokenizer


def test_missing_local_path_and_offline_hub_id_fail_with_clear_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model_name_or_path='\./no/such': no such local path"):
        load_model_config("./no/such")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model_config(str(tmp_path), field="reward_model")
    with pytest.raises(OSError, match=r"policy='gpt2' could not be loaded: .*offline.*local directory"):
        load_model_config("gpt2", field="policy")


def test_local_directory_loads(tmp_path):
    tok = build_tokenizer(["hello world"] * 4, vocab_size=270)
    build_causal_lm(tok).save_pretrained(tmp_path)
    assert load_model_config(str(tmp_path)).model_type == "gpt2"


def test_missing_relative_directory_says_so(tmp_path, monkeypatch):
    # relative to a fresh directory, not the checkout: after `rlhf-demo` the checkout has a runs/ of its own
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="meant as a local directory: it does not exist"):
        load_model_config("runs/not_there")
    (tmp_path / "runs").mkdir()  # now the parent exists, so the name can only be a (missing) local path
    with pytest.raises(FileNotFoundError, match=r"model_name_or_path='runs/not_there': no such local path"):
        load_model_config("runs/not_there")


def test_pad_token_is_never_added_and_embeddings_never_resized():
    """PAD == EOS stays as it is; a tokenizer without PAD uses EOS. Masks come from positions (test_pad_eos.py)."""
    from rlhf.models import ensure_pad_token

    tok = build_tokenizer(["hello world"] * 4, vocab_size=270)
    model = build_causal_lm(tok)
    model.resize_token_embeddings(len(tok) + 30)  # padded matrix, like Pythia's
    rows, n_tokens = model.get_input_embeddings().weight.shape[0], len(tok)
    tok.pad_token = tok.eos_token
    ensure_pad_token(tok, model)
    assert tok.pad_token_id == tok.eos_token_id and len(tok) == n_tokens
    assert model.get_input_embeddings().weight.shape[0] == rows
    tok.pad_token = None
    model.config.pad_token_id = None
    ensure_pad_token(tok, model)
    assert tok.pad_token_id == tok.eos_token_id == model.config.pad_token_id and len(tok) == n_tokens
