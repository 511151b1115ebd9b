"""The bridge: the textbook's policies and a language model on the same FrozenLake maps."""

import json

import pytest

from rlhf.bridge import BridgeConfig, run_bridge, tabular_success_rates
from rlhf.envs import make_frozenlake
from rlhf.tiny import build_causal_lm, build_tokenizer


def test_value_iteration_solves_every_generated_map_and_random_rarely_does():
    cfg = BridgeConfig(q_episodes=1500, eval_episodes=20)
    rates = [tabular_success_rates(make_frozenlake(4, map_seed=s).unwrapped, cfg) for s in (1000, 1001, 1002)]
    # generate_random_map only returns maps with a path, and the ice is not slippery: the optimum always arrives
    assert [r["optimal"] for r in rates] == [1.0, 1.0, 1.0]
    assert [r["q_learning"] for r in rates] == [1.0, 1.0, 1.0]
    assert all(r["random"] < 0.5 for r in rates)


def test_bridge_table_with_a_language_model(tmp_path):
    env = make_frozenlake(map_in_prompt=True)
    obs, info = env.reset(seed=0)
    tok = build_tokenizer([info["system_prompt"], obs, "left down right up"] * 20, vocab_size=400)
    model_dir = tmp_path / "tiny"
    build_causal_lm(tok, seed=0, n_positions=2048).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    cfg = BridgeConfig(models=[f"tiny={model_dir}"], num_maps=3, q_episodes=1500, eval_episodes=10,
                       max_turns=3, max_new_tokens=4, output_dir=str(tmp_path / "out"))  # fmt: skip
    result = run_bridge(cfg)
    assert list(result["mean"]) == ["optimal", "q_learning", "random", "tiny"]
    assert result["mean"]["optimal"] == 1.0 and result["mean"]["tiny"] == 0.0  # a random LM never arrives
    saved = json.loads((tmp_path / "out" / "bridge.json").read_text())
    assert [m["map_seed"] for m in saved["maps"]] == [1000, 1001, 1002]
    assert "| tiny | 0.000 |" in (tmp_path / "out" / "bridge.md").read_text()
    assert (tmp_path / "out" / "bridge.png").stat().st_size > 1000


def test_bridge_refuses_a_model_without_a_name():
    with pytest.raises(ValueError, match="models: expected name=path"):
        BridgeConfig(models=["/some/path"])


def test_bridge_command_line_takes_several_models_as_the_readme_writes_them():
    """`rlhf bridge --models base=A trained=B` (README): several values after one flag make the list; a field
    that is not a list refuses several, naming the field."""
    from classic.cli import parse_config

    cfg = parse_config(BridgeConfig, ["--models", "base=A", "trained=B", "--num_maps", "3"])
    assert cfg.models == ["base=A", "trained=B"] and cfg.num_maps == 3
    assert parse_config(BridgeConfig, ["--models", "[base=A, trained=B]"]).models == ["base=A", "trained=B"]
    with pytest.raises(ValueError, match="'num_maps': expected int"):
        parse_config(BridgeConfig, ["--num_maps", "3", "4"])
