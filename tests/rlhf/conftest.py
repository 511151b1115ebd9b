import pytest
import torch

from rlhf.tiny import build_causal_lm, build_reward_model, build_tokenizer

CORPUS = [
    "the movie was good and the cast was good",
    "a bad plot and a bad ending",
    "the cat sat on the mat",
    "a dog ran in the park with a ball",
    "good good very good",
    "it was fine I guess",
] * 20


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer(CORPUS, vocab_size=320)


@pytest.fixture
def policy(tokenizer):
    return build_causal_lm(tokenizer, seed=0)


@pytest.fixture
def reward_model(tokenizer):
    return build_reward_model(tokenizer, seed=1)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def pretrain(model, tokenizer, texts, steps: int = 60, lr: float = 3e-3, seed: int = 0):
    """A few steps of next-token training so the tiny model's samples look like the corpus (an SFT stand-in)."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    eos = tokenizer.eos_token
    enc = tokenizer([t + eos for t in texts], return_tensors="pt", padding=True, padding_side="right")
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(texts), (16,))
        loss = model(
            input_ids=enc.input_ids[idx], attention_mask=enc.attention_mask[idx], labels=labels[idx]
        ).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model


@pytest.fixture(scope="session")
def sft_state(tokenizer):
    model = pretrain(build_causal_lm(tokenizer, seed=0), tokenizer, CORPUS)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def sft_policy(tokenizer, sft_state):
    model = build_causal_lm(tokenizer, seed=0)
    model.load_state_dict(sft_state)
    return model


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    """accelerate keeps one process-wide state; tests that switch bf16 on need a clean one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
