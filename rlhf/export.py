"""A run's model leaves the trainer here: `save_model` (weights and tokenizer under every engine), the model card
next to them, and the Hub push.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from classic.runlog import explain_full_disk, read_metrics
from rlhf.card import PLOTS, model_card
from rlhf.checkpoint import PREFIX, RUN_LOGS


def save_model(
    accelerator: Accelerator,
    policy: torch.nn.Module,
    critic: torch.nn.Module | None,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: Path,
) -> None:
    """save_pretrained of the policy (the adapter only with LoRA) and the tokenizer, with a full state dict under
    every engine (gathered from the shards under FSDP2 / ZeRO-3: a collective, every rank calls it), loadable with
    from_pretrained; the critic goes to `critic/` next to it (`rlhf.models.Critic.load`). Rank 0 writes."""
    acc = accelerator
    state = acc.get_state_dict(policy)
    critic_state = acc.get_state_dict(critic) if critic is not None else None
    if not acc.is_main_process:
        return
    unwrapped = acc.unwrap_model(policy)
    # a gathered state dict holds tied weights (GPT-2's LM head) as separate copies: keep one name each, as
    # save_pretrained does for a model's own state dict
    first: dict[int, str] = {}
    for name, param in unwrapped.named_parameters(remove_duplicate=False):
        first.setdefault(id(param), name)
    tied = {name for name, _ in unwrapped.named_parameters(remove_duplicate=False)} - set(first.values())
    with explain_full_disk(output_dir, written_dir=output_dir):  # no half-written files left
        unwrapped.save_pretrained(output_dir, state_dict={k: v for k, v in state.items() if k not in tied})
        tokenizer.save_pretrained(output_dir)
        if critic_state is not None:
            acc.unwrap_model(critic).save(output_dir / "critic", critic_state)


def write_card(output_dir: Path, run_dir: Path, **card: Any) -> Path:
    """README.md in `output_dir` from the run's metrics.jsonl (in `run_dir`), with the run's plots copied next to
    it; `card` holds the remaining arguments of `rlhf.card.model_card`."""
    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    plots = []
    for name in PLOTS:
        if (run_dir / name).is_file():
            if (output_dir / name).resolve() != (run_dir / name).resolve():
                shutil.copy2(run_dir / name, output_dir / name)
            plots.append(name)
    (output_dir / "README.md").write_text(model_card(rows=rows, plots=plots, **card))
    return output_dir / "README.md"


def check_hub_access(hub_model_id: str | None, output_dir: str) -> str:
    """push_to_hub, before any work: the repository id it will use (`hub_model_id`, else the output_dir's name,
    as TRL does), or a one-line error for what would make the upload fail after training: an id the Hub refuses,
    no token, offline mode (HF_HUB_OFFLINE), an unreachable Hub, a token the Hub rejects or one that cannot write."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = hub_model_id or Path(output_dir).resolve().name
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        whose = "" if hub_model_id else " (the output_dir's name)"
        raise ValueError(
            f"push_to_hub: hub_model_id={repo_id!r}{whose} is not a valid Hub repository id (name or user/name; "
            "letters, digits, '-', '_' and '.', at most 96 characters): set hub_model_id='user/name'"
        ) from None
    if get_token() is None:
        raise ValueError(
            "push_to_hub=True but no Hugging Face token was found: run `huggingface-cli login` or set HF_TOKEN "
            "(or set push_to_hub=False and upload the saved folder later)"
        )
    if _hub_offline():
        raise ValueError(
            "push_to_hub=True with HF_HUB_OFFLINE=1: the upload would fail after training; unset HF_HUB_OFFLINE "
            "(or set push_to_hub=False and upload the saved folder later)"
        )
    try:
        me = HfApi().whoami()
    except Exception as err:  # a rejected token (401), no network, DNS, a proxy
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 401:
            raise ValueError(
                "push_to_hub: the Hugging Face token was rejected by the Hub (401): run `huggingface-cli login` "
                "with a valid write token or fix HF_TOKEN"
            ) from None
        raise ValueError(
            f"push_to_hub: could not reach the Hub to check the token ({type(err).__name__}: {err}); check the "
            "network or HF_ENDPOINT, or set push_to_hub=False and upload the saved folder later"
        ) from None
    if (me.get("auth") or {}).get("accessToken", {}).get("role") == "read":
        raise ValueError(
            f"push_to_hub: the Hugging Face token of {me.get('name')!r} is read-only: create one with write access "
            "(https://huggingface.co/settings/tokens) and run `huggingface-cli login`"
        )
    return repo_id


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import), else huggingface_hub's value."""
    import huggingface_hub

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        return bool(huggingface_hub.constants.HF_HUB_OFFLINE)
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


# what push_to_hub uploads of the saved folder (patterns as upload_folder reads them: fnmatch on the path relative to
# the folder): the model (weights, config; adapter files with LoRA), the tokenizer's files, the card, the plots and
# the critic; never checkpoints, interrupted writes or hidden leftovers, and the run's logs only when asked
HUB_FILES = (
    "*.safetensors",
    "*.json",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "*.jinja",
    "*.py",  # the modeling code a trust_remote_code model saves beside its weights (config.json's auto_map)
    "README.md",
    *PLOTS,
    "critic/*",
)
HUB_IGNORE = (f"{PREFIX}*", f"**/{PREFIX}*/**", ".*", "**/.*")


def push_folder(
    folder: str | Path, repo_id: str, private: bool | None, what: str, upload_logs: bool = False
) -> str:
    """Create `repo_id` if needed and upload `folder`: HUB_FILES (model, tokenizer, card, plots, critic), with
    `upload_logs` also the run's logs (RUN_LOGS: metrics and every prompt and completion). Returns the commit URL.
    A failure names the repository and says the local folder is intact."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo.repo_id,
            folder_path=str(folder),
            commit_message=f"rlbook PPOTrainer: {what}",
            allow_patterns=[*HUB_FILES, *(RUN_LOGS if upload_logs else ())],
            ignore_patterns=list(HUB_IGNORE),
        )
    except Exception as err:  # network, auth, quota: the model is saved either way
        raise RuntimeError(
            f"push_to_hub: uploading {folder} to {repo_id!r} failed ({type(err).__name__}: {err}); the saved "
            "model in that folder is intact"
        ) from err
    return str(getattr(info, "commit_url", info))
