"""Every shipped YAML loads into its script's config class; overrides, unknown keys and types behave."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig

from classic.cli import parse_config
from rlhf.agent_command import AgentRecipeConfig
from rlhf.train_command import PPORecipeConfig
from rlhf.trl_stages import DPORecipeConfig, RewardRecipeConfig, SFTRecipeConfig

REPO = Path(__file__).resolve().parents[2]
CONFIG_CLASSES = {
    "ppo.py": PPORecipeConfig,
    "sft.py": SFTRecipeConfig,
    "reward_model.py": RewardRecipeConfig,
    "dpo.py": DPORecipeConfig,
}
# recipes/demo*.yaml belong to the offline demo (rlhf-demo, tests/rlhf/test_demo.py), not to these scripts
RECIPE_YAMLS = sorted(p for p in (REPO / "recipes").glob("*.yaml") if not p.name.startswith("demo"))
LAUNCH = re.compile(
    r"^# accelerate launch --config_file (recipes/accelerate/\S+\.yaml) (recipes/\S+\.py) --config (recipes/\S+\.yaml)$"
)


def test_the_issue_recipes_are_all_shipped():
    names = {p.stem for p in RECIPE_YAMLS}
    expected = {
        "gpt2_imdb_ppo",
        "gpt2_imdb_rloo",
        "qwen_gsm8k_grpo",
        "qwen_gsm8k_grpo_lora",
        "qwen_gsm8k_ppo",
    }
    assert expected | {"tldr_sft", "tldr_reward", "tldr_ppo", "tldr_dpo"} <= names


@pytest.mark.parametrize("path", RECIPE_YAMLS, ids=lambda p: p.name)
def test_yaml_loads_into_its_script_config(path):
    """The first line is the launch command; it names an existing accelerate config, the script, and this file."""
    first = path.read_text().splitlines()[0]
    match = LAUNCH.match(first)
    assert match, f"{path.name}: first line must be the launch command, got {first!r}"
    accelerate_config, script, config = match.groups()
    assert (REPO / accelerate_config).is_file()
    assert config == f"recipes/{path.name}"
    assert (REPO / script).is_file()
    agent = "env" in yaml.safe_load(path.read_text())  # recipes/*_agent.yaml: a text env instead of a dataset
    cls = AgentRecipeConfig if agent else CONFIG_CLASSES[Path(script).name]
    cfg = parse_config(cls, ["--config", str(path)])
    assert cfg.output_dir.startswith("runs/")
    if isinstance(cfg, AgentRecipeConfig):
        assert cfg.num_train_seeds <= cfg.eval_seed_start and cfg.max_turns >= 1
    if isinstance(cfg, PPORecipeConfig):
        assert cfg.max_prompt_length + cfg.max_new_tokens <= 1024  # gpt2's window is the smallest
        if cfg.advantage_estimator != "gae":
            assert cfg.num_generations >= 2


def test_every_field_can_be_overridden_on_the_command_line():
    argv = ["--config", "recipes/gpt2_imdb_ppo.yaml", "--max_steps", "3", "--output_dir", "runs/x"]
    argv += ["--model_name_or_path", "/tmp/m", "--dataset_name", "./d.jsonl", "--dataset_split", "test"]
    argv += [
        "--reward_label",
        "NEGATIVE",
        "--kl_coef=0.1",
        "--use_lora",
        "--lora_target_modules",
        "c_attn,c_proj",
    ]
    cfg = parse_config(PPORecipeConfig, [str(REPO / a) if a.endswith(".yaml") else a for a in argv])
    assert (cfg.max_steps, cfg.output_dir, cfg.model_name_or_path) == (3, "runs/x", "/tmp/m")
    assert (cfg.dataset_name, cfg.dataset_split, cfg.reward_label) == ("./d.jsonl", "test", "NEGATIVE")
    assert cfg.kl_coef == 0.1 and cfg.use_lora and cfg.lora_target_modules == ["c_attn", "c_proj"]
    assert cfg.learning_rate == 1.41e-5  # from the YAML


def test_unknown_keys_are_errors_that_list_the_valid_ones(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "recipes/tldr_sft.yaml").read_text() + "learning_rat: 1.0\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rat'\].*learning_rate"):
        parse_config(SFTRecipeConfig, ["--config", str(bad)])
    with pytest.raises(ValueError, match="valid keys are: .*dataset_name"):
        parse_config(
            PPORecipeConfig, ["--config", str(REPO / "recipes/qwen_gsm8k_grpo.yaml"), "--datset", "x"]
        )


@pytest.mark.parametrize(
    "override, message",
    [
        (["--max_steps", "two"], "config field 'max_steps'"),
        (["--task", "mnist"], "config field 'task'"),
        (["--use_lora", "maybe"], "config field 'use_lora'"),
        (["--reward_functions", "[nope]"], "reward_functions: unknown"),
        (["--reward_model_name_or_path", "none"], "give a reward"),
        (["--mini_batch_size", "7"], "mini_batch_size=7 must divide"),
    ],
)
def test_bad_values_name_the_field(override, message):
    yaml_path = str(REPO / "recipes/qwen_gsm8k_grpo.yaml")
    argv = ["--config", yaml_path, *override]
    if override[0] == "--reward_model_name_or_path":
        argv += ["--reward_functions", "[]"]
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_config(PPORecipeConfig, argv)


def test_required_fields_are_required():
    with pytest.raises(ValueError, match=r"command line: missing required field\(s\) model_name_or_path for"):
        parse_config(PPORecipeConfig, ["--dataset_name", "d", "--task", "imdb", "--reward_functions", "[]"])


ACCELERATE_CONFIGS = {
    "single_gpu": "NO",
    "cpu": "NO",
    "ddp": "MULTI_GPU",
    "fsdp2": "FSDP",
    "deepspeed_zero2": "DEEPSPEED",
    "deepspeed_zero3": "DEEPSPEED",
}


@pytest.mark.parametrize("name, distributed_type", ACCELERATE_CONFIGS.items())
def test_accelerate_configs_parse_with_the_expected_keys(name, distributed_type):
    path = REPO / "recipes" / "accelerate" / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    for key in (
        "compute_environment",
        "distributed_type",
        "num_processes",
        "num_machines",
        "mixed_precision",
    ):
        assert key in raw, (name, key)
    assert raw["distributed_type"] == distributed_type
    assert raw["use_cpu"] is (name == "cpu")
    config = ClusterConfig.from_yaml_file(str(path))  # accelerate's own loader: unknown keys are errors
    assert str(config.distributed_type).endswith(distributed_type)
    if name.startswith("deepspeed"):
        assert raw["deepspeed_config"]["zero_stage"] == int(name[-1])
    if name == "fsdp2":
        assert raw["fsdp_config"]["fsdp_version"] == 2  # FSDP1 is refused by the trainer
        assert raw["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if name.startswith("deepspeed"):
        assert raw["deepspeed_config"]["zero3_init_flag"] is False  # the reference starts as a copy
    launch = [line for line in path.read_text().splitlines() if line.startswith("# accelerate launch")]
    assert launch and f"--config_file recipes/accelerate/{name}.yaml" in launch[0]


def test_shipped_accelerate_configs_are_exactly_these():
    assert {p.stem for p in (REPO / "recipes" / "accelerate").glob("*.yaml")} == set(ACCELERATE_CONFIGS)


def test_recipe_script_bad_config_is_one_line_and_exit_status_2(tmp_path):
    """`python recipes/ppo.py ...` (or under accelerate launch): a bad value is one line on stderr, status 2."""
    # no PYTHONPATH: the script needs only the installed library (recipes/ is not a package)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [sys.executable, str(REPO / "recipes/ppo.py"), "--config", str(REPO / "recipes/gpt2_imdb_ppo.yaml")]
    result = subprocess.run(
        [*cmd, "--max_steps", "0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert (result.returncode, result.stderr) == (
        2,
        "recipes/ppo.py: error: PPOConfig.max_steps must be positive, got 0\n",
    )
