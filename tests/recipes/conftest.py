"""Tiny local stand-ins for the recipes' Hub models and datasets: same columns, same loading code, local sources."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict
from transformers import GPT2ForSequenceClassification

from rlhf.tiny import build_causal_lm, build_tokenizer, tiny_gpt2_config

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def read_jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, str]:
    """Paths of: a tiny causal LM with a chat template (stands in for gpt2, Qwen and Pythia), a tiny 2-label
    sentiment classifier with labels NEGATIVE/POSITIVE (stands in for lvwerra/distilbert-imdb), the jsonl
    fixtures, and the IMDB fixture as a save_to_disk DatasetDict with a `train` split."""
    root = tmp_path_factory.mktemp("assets")
    texts = [json.dumps(row) for f in FIXTURES.glob("*.jsonl") for row in read_jsonl(f.name)]
    tokenizer = build_tokenizer(texts * 3, vocab_size=400, model_max_length=512)
    tokenizer.chat_template = CHAT_TEMPLATE

    lm = build_causal_lm(tokenizer, seed=0, n_positions=512, n_embd=32, n_head=2, n_layer=1)
    lm.save_pretrained(root / "tiny_lm")
    tokenizer.save_pretrained(root / "tiny_lm")

    config = tiny_gpt2_config(tokenizer, n_positions=512, n_embd=32, n_head=2, n_layer=1)
    config.num_labels = 2
    config.id2label = {0: "NEGATIVE", 1: "POSITIVE"}
    config.label2id = {"NEGATIVE": 0, "POSITIVE": 1}
    GPT2ForSequenceClassification(config).save_pretrained(root / "tiny_sentiment")
    tokenizer.save_pretrained(root / "tiny_sentiment")

    imdb = Dataset.from_list(read_jsonl("imdb.jsonl"))
    DatasetDict({"train": imdb, "test": imdb.select(range(4))}).save_to_disk(root / "imdb_disk")
    paths = {
        "root": root,
        "lm": root / "tiny_lm",
        "sentiment": root / "tiny_sentiment",
        "imdb_disk": root / "imdb_disk",
    }
    paths.update({f.stem: f for f in FIXTURES.glob("*.jsonl")})
    return {k: str(v) for k, v in paths.items()}


def launch(
    script: str,
    config: str,
    *overrides: str,
    accelerate_config: str = "recipes/accelerate/cpu.yaml",
    accelerate_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file <accelerate_config> recipes/<script> --config <config> <overrides>`, run
    from the repository root the way a user runs it (offline, one thread per process)."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra_env or {})
    cmd = [ACCELERATE, "launch", "--config_file", accelerate_config, *accelerate_args]
    cmd += [f"recipes/{script}", "--config", config, *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
