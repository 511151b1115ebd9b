"""Every environment the project registers passes gymnasium's own checker, and the checkers env accepts every
action of its action space (an illegal one is a random legal move plus a penalty), so mask-unaware agents run."""

import json
import os

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import classic.envs  # noqa: F401  (registers the rlbook/* ids)
from classic.envs.checkers import ILLEGAL_MOVE_PENALTY
from classic.reinforce import ReinforceConfig, load, train

os.environ["RLBOOK_NO_PROGRESS"] = "1"

# from the registry, not a hand list: a newly registered env is checked without editing this file
ENV_IDS = sorted(env_id for env_id in gym.registry if env_id.startswith("rlbook/"))


def test_the_registry_lists_the_project_envs():
    assert len(ENV_IDS) >= 7 and "rlbook/Checkers-v0" in ENV_IDS, ENV_IDS


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registered_env_passes_gymnasium_check_env(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped)  # raises on any failed check (spaces, seeding determinism, any action accepted)
    env.close()


def test_checkers_illegal_action_is_a_random_legal_move_with_a_penalty():
    env = gym.make("rlbook/Checkers-v0")
    _, info = env.reset(seed=0)
    legal = list(np.flatnonzero(info["action_mask"]))
    assert 0 not in legal and info["illegal_action"] is False
    obs, reward, terminated, truncated, info = env.step(0)
    assert reward == pytest.approx(-ILLEGAL_MOVE_PENALTY) and info["illegal_action"] is True
    assert not terminated and not truncated and info["action_mask"].sum() > 0
    # the same game, playing by hand the legal move the env drew: same draw from the seeded np_random, so the
    # same board after the opponent's (also seeded) reply
    twin = gym.make("rlbook/Checkers-v0")
    twin.reset(seed=0)
    pick = legal[int(twin.unwrapped.np_random.integers(len(legal)))]
    twin_obs, twin_reward, *_, twin_info = twin.step(pick)
    np.testing.assert_array_equal(obs, twin_obs)
    assert twin_reward == 0.0 and twin_info["illegal_action"] is False


def test_short_reinforce_run_on_checkers_completes_with_sane_numbers(tmp_path):
    """REINFORCE samples all 72 actions (it does not read the mask); it used to crash on the first illegal one."""
    result = train(
        ReinforceConfig(env_id="rlbook/Checkers-v0", seed=0, total_timesteps=3000, output_dir=str(tmp_path))
    )
    returns = np.array(result.episode_returns)
    lengths = np.diff([0, *result.episode_steps])  # episodes follow each other in the one env
    assert result.global_step == 3000 and 100 < len(returns) < 400, len(returns)  # measured 196 episodes
    assert lengths.min() >= 1 and lengths.max() <= 200  # the registered time limit
    # a return is the outcome (+1, 0, -1) minus 0.1 per illegal action, at most one per step
    assert np.allclose(returns * 10, np.round(returns * 10), atol=1e-6)
    assert (returns <= 1.0 + 1e-9).all() and (returns >= -1.0 - ILLEGAL_MOVE_PENALTY * lengths - 1e-9).all()
    # an untrained policy over 72 actions, ~5 of them legal: most steps cost the penalty (measured mean -1.6)
    assert -3.0 < returns.mean() < -0.5, returns.mean()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["episode_return"] for r in rows] == result.episode_returns
    obs, _ = gym.make("rlbook/Checkers-v0").reset(seed=0)
    assert np.array_equal(load(tmp_path).act(obs[None]), result.agent.act(obs[None]))
