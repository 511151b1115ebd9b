"""Snake (tabular Q-learning on the compact state) and checkers (linear SARSA) beat random play, seeded."""

import gymnasium as gym
import numpy as np

import classic.envs  # noqa: F401  (registers rlbook/Snake-v0, rlbook/Checkers-v0)
from classic import q_learning
from classic.envs.checkers import N_FEATURES, afterstate_features, apply_move, initial_board, legal_moves
from classic.envs.snake import SnakeEnv
from classic.tabular.linear import greedy_linear_action, linear_sarsa


def play(env, policy, games: int, seed: int) -> list[dict]:
    """Final info of each of `games` episodes, resets seeded seed, seed+1, ..."""
    infos = []
    for g in range(games):
        obs, info = env.reset(seed=seed + g)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(policy(obs, info))
            done = terminated or truncated
        infos.append({**info, "terminated": terminated})
    return infos


def test_snake_compact_state_by_hand():
    env = SnakeEnv(size=6)
    env.reset(seed=0)
    env.heading = 1  # facing right, head on the right wall, body below-left
    env.body.clear()
    env.body.extend([(2, 5), (3, 5)])
    env.food = (0, 0)
    food_dir = 0 * 3 + 0  # food is up (-1) and left (-1)
    # straight is the wall; right (down) is the tail, which moves away this step, so it is safe
    assert env._obs() == (0b001 * 9 + food_dir) * 4 + 1
    env.body.append((3, 4))  # now (3, 5) is body but not the tail: danger on the right too
    assert env._obs() == (0b101 * 9 + food_dir) * 4 + 1


def test_snake_q_learning_eats_far_more_than_random():
    env = gym.make("rlbook/Snake-v0", size=8)
    result = q_learning(env, 500, alpha=0.5, gamma=0.95, epsilon=0.1, seed=0, progress=False)
    learned = np.mean([i["food"] for i in play(env, lambda s, _: int(np.argmax(result.Q[s])), 100, 10_000)])
    rng = np.random.default_rng(0)
    random = np.mean([i["food"] for i in play(env, lambda s, _: int(rng.integers(3)), 100, 10_000)])
    assert random < 0.5, random
    assert learned > 8.0, learned  # measured 12.75 food per game vs 0.21 for random (seeds 1, 2: 12.6, 11.4)
    grid = gym.make("rlbook/Snake-v0", obs_mode="grid", render_mode="rgb_array")
    obs, _ = grid.reset(seed=0)
    assert obs.shape == (3, 8, 8) and obs[1].sum() == 1 and obs[2].sum() == 1
    assert grid.render().shape == (128, 128, 3)


def test_checkers_rules():
    board = initial_board()
    assert len(legal_moves(board, 1)) == 5  # 3 front men: 2 + 2 + 1 moves (edge)
    # a jump is compulsory and a double jump continues with the same piece
    board = [0] * 18
    board[13] = 1  # our man at (4, 3); squares are numbered r * 3 + c // 2
    board[10], board[4] = -1, -1  # their men at (3, 2) and (1, 2)
    board[16] = -1  # and one at (5, 3) that cannot be taken (men only move forward)
    moves = legal_moves(board, 1)
    assert moves == [13 * 4 + 0]  # the only legal move is the up-left jump, although steps exist
    after, captured, again = apply_move(board, moves[0])
    assert captured and again == 6 and after[10] == 0  # landed on (2, 1) and must jump again
    assert legal_moves(after, 1, only_from=6) == [6 * 4 + 1]
    after, captured, again = apply_move(after, 6 * 4 + 1)
    assert (
        captured and again == -1 and after[4] == 0 and after[1] == 2
    )  # landed on (0, 3): promoted, turn ends
    env = gym.make("rlbook/Checkers-v0")
    env.reset(seed=0)
    _, reward, _, _, info = env.step(0)  # illegal: a random legal move instead, and a penalty (test_envs.py)
    assert reward == -0.1 and info["illegal_action"]


def test_checkers_linear_sarsa_beats_random():
    env = gym.make("rlbook/Checkers-v0")
    result = linear_sarsa(env, afterstate_features, N_FEATURES, 200, alpha=0.05, seed=0, progress=False)
    greedy = play(
        env, lambda o, i: greedy_linear_action(result.w, afterstate_features, o, i, 72), 150, 10_000
    )
    rng = np.random.default_rng(0)
    random = play(env, lambda o, i: int(rng.choice(np.flatnonzero(i["action_mask"]))), 150, 10_000)
    win_learned = np.mean([i["winner"] == 1 for i in greedy])
    win_random = np.mean([i["winner"] == 1 for i in random])
    assert 0.4 < win_random < 0.6, win_random  # the random first mover wins about half its games
    assert win_learned > 0.7, win_learned  # measured 0.77 (draws 0.15, losses 0.07); random 0.49
    assert win_learned > win_random + 0.2
    assert result.w[5] < 0 and result.w[3] < 0  # learned: leaving pieces en prise and their men are bad
