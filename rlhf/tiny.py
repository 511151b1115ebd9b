"""Tiny local models and tokenizers, for tests, benchmarks and the offline demo (the Hub is not needed).

`build_tokenizer` trains a byte-level BPE on the given texts and wraps it as a `PreTrainedTokenizerFast` with
distinct BOS/EOS, PAD and UNK tokens (PAD != EOS, as "The N+ implementation details of RLHF" require).
`build_causal_lm` / `build_reward_model` make small randomly initialised GPT-2s that match that tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"


def build_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, model_max_length: int = 256
) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`; left padding (what generation wants)."""
    tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN, UNK_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        model_max_length=model_max_length,
    )


def tiny_gpt2_config(
    tokenizer: PreTrainedTokenizerFast,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 256,
    dropout: float = 0.0,
) -> GPT2Config:
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_causal_lm(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **config_kwargs) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(tiny_gpt2_config(tokenizer, **config_kwargs))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_reward_model(
    tokenizer: PreTrainedTokenizerFast, seed: int = 0, **config_kwargs
) -> GPT2ForSequenceClassification:
    torch.manual_seed(seed)
    config = tiny_gpt2_config(tokenizer, **config_kwargs)
    config.num_labels = 1
    return GPT2ForSequenceClassification(config)
