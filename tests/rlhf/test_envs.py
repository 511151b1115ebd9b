"""Text environments (rlhf.envs): gymnasium's checker, scripted replies with known outcomes, the calculator
tool, and a classic tabular agent on the very env object a text env wraps."""

import json
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.toy_text.frozen_lake import FrozenLakeEnv
from gymnasium.utils.env_checker import check_env

from classic.envs.maze import bfs_distance
from classic.tabular import value_iteration
from rlhf.envs import (
    TEXT_ENVS,
    CalculatorEnv,
    TextEnv,
    check_text_env,
    make_checkers,
    make_frozenlake,
    make_maze,
    make_taxi,
    make_text_env,
    safe_eval,
    word_parser,
)
from rlhf.envs.games import GRID_MOVES, TAXI_MOVES, DistanceShaping, frozenlake_distances

OPTIMAL_4X4 = [
    "down",
    "down",
    "right",
    "right",
    "down",
    "right",
]  # S at (0,0) to G at (3,3), around the holes


def play(env, replies):
    """Step `replies` in order; returns the lists of (obs, reward, terminated, truncated, info) per step."""
    return [env.step(reply) for reply in replies]


def play_policy(env, policy, words, seed=0, max_steps=100):
    """Greedy text episode: the tabular policy's action, written as its word, for each state of env.unwrapped."""
    env.reset(seed=seed)
    total, steps, done = 0.0, 0, False
    while not done and steps < max_steps:
        _, reward, terminated, truncated, info = env.step(words[policy[env.unwrapped.s]])
        total, steps, done = total + reward, steps + 1, terminated or truncated
    return total, steps, terminated, info


@pytest.mark.parametrize("name", sorted(TEXT_ENVS))
def test_every_text_env_passes_check_env(name):
    env = make_text_env(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    # the one warning expected: check_env prefers an unwrapped env, and TextEnv is a wrapper by design
    others = [str(w.message) for w in caught if "different from the unwrapped" not in str(w.message)]
    assert others == []
    check_text_env(env)
    obs, info = env.reset(seed=3)
    assert obs in env.observation_space and info["system_prompt"]
    assert env.reset(seed=3)[0] == obs  # deterministic given the seed
    _, _, _, _, step_info = env.step("no move here")
    assert step_info["invalid_action"] is True and step_info["success"] is False


def test_unwrapped_is_the_inner_env_and_value_iteration_solves_it():
    inner = gym.make("FrozenLake-v1", is_slippery=False)
    text_env = TextEnv(inner, lambda env, obs: str(obs), word_parser(GRID_MOVES), "rules")
    assert text_env.env is inner and text_env.unwrapped is inner.unwrapped

    env = make_frozenlake(size=4, is_slippery=False)
    assert type(env.unwrapped) is FrozenLakeEnv
    V, policy = value_iteration(env.unwrapped, gamma=0.99)
    assert V[0] == pytest.approx(0.99**5)  # reward 1 on the 6th move of the shortest path
    total, steps, terminated, info = play_policy(env, policy, GRID_MOVES)  # the classic policy, through text
    assert (total, steps, terminated, info["success"]) == (1.0, 6, True, True)


def test_frozenlake_scripted_optimal_path():
    env = make_frozenlake(size=4, is_slippery=False)
    obs, info = env.reset(seed=0)
    assert obs.splitlines()[:4] == ["P F F F", "F H F H", "F F F H", "H F F G"]
    assert obs.endswith("Reply with one of: left, down, right, up.")
    steps = play(env, OPTIMAL_4X4)
    assert [r for _, r, _, _, _ in steps] == [0.0] * 5 + [1.0]
    assert [t for _, _, t, _, _ in steps] == [False] * 5 + [True]
    assert [i["action"] for *_, i in steps] == [1, 1, 2, 2, 1, 2]
    assert [i["success"] for *_, i in steps] == [False] * 5 + [True]
    assert "You reached the goal!" in steps[-1][0] and steps[-1][0].splitlines()[3] == "H F F P"
    # a hole ends the game without success
    env.reset(seed=0)
    obs, reward, terminated, _, info = play(env, ["right", "down"])[-1]
    assert (reward, terminated, info["success"]) == (0.0, True, False) and "fell into a hole" in obs


def _q_values(lake: FrozenLakeEnv, potential: np.ndarray | None, gamma: float = 1.0) -> np.ndarray:
    """Q* by value iteration on the lake's own model, the reward shaped by `potential` if given."""
    phi = np.zeros(lake.observation_space.n) if potential is None else potential
    V = np.zeros(lake.observation_space.n)
    for _ in range(100):
        Q = np.array(
            [
                [
                    sum(
                        p * (r + phi[s2] - phi[s] + (0.0 if done else gamma * V[s2]))
                        for p, s2, r, done in lake.P[s][a]
                    )
                    for a in range(4)
                ]
                for s in range(lake.observation_space.n)
            ]
        )
        V = Q.max(axis=1)
    return Q


def test_frozenlake_distance_shaping_is_potential_based():
    env = make_frozenlake(size=4, shaping=True)
    shaping = env.env
    assert isinstance(shaping, DistanceShaping) and type(env.unwrapped) is FrozenLakeEnv
    assert frozenlake_distances(env.unwrapped.desc).tolist() == [
        [6, 5, 4, 5],
        [5, -1, 3, -1],
        [4, 3, 2, -1],
        [-1, 2, 1, 0],
    ]
    env.reset(seed=0)
    steps = play(env, OPTIMAL_4X4)
    # each move toward the goal earns 1/6 (6 moves from the start), the goal 1 + 1/6; the shaping telescopes to
    # phi(goal) - phi(start) = 0 - (-1) = 1 on top of the env's 1
    assert [r for _, r, _, _, _ in steps] == pytest.approx([1 / 6] * 5 + [7 / 6])
    assert [i["env_reward"] for *_, i in steps] == [0.0] * 5 + [1.0]
    assert [i["success"] for *_, i in steps] == [False] * 5 + [True]  # from the tile, not the shaped reward
    env.reset(seed=0)
    (_, r1, *_), (_, r2, terminated, _, info) = play(env, ["right", "down"])  # a step toward, then a hole
    assert (r1, r2, terminated, info["success"]) == (pytest.approx(1 / 6), pytest.approx(-1 / 6), True, False)
    # Ng, Harada and Russell (1999), theorem 1: Q*_shaped(s, a) = Q*(s, a) - phi(s), except that a hole's
    # potential is -1 rather than 0, one more -1 on moves into a hole; the optimal moves are the same
    lake, phi = env.unwrapped, shaping.potential
    live = [s for s in range(16) if lake.desc.flat[s] in b"SF"]
    into_hole = np.array([[lake.desc.flat[lake.P[s][a][0][1]] == b"H" for a in range(4)] for s in range(16)])
    Q, Q_shaped = _q_values(lake, None), _q_values(lake, phi)
    assert np.allclose(Q_shaped[live], (Q - phi[:, None] - into_hole)[live], atol=1e-12)
    best = [set(np.flatnonzero(np.isclose(q, q.max()))) for q in Q[live]]
    assert best == [set(np.flatnonzero(np.isclose(q, q.max()))) for q in Q_shaped[live]]
    assert Q[0].tolist() == [1.0, 1.0, 1.0, 1.0]  # gamma 1: any move that keeps a path is optimal
    check_env(env.unwrapped)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9])
def test_discounted_shaped_frozenlake_is_solved_by_the_shortest_path(gamma):
    # the recipe discounts turns (gamma 0.5) so that each move is judged mostly by its own shaped reward; on the
    # default map the optimal moves are then exactly those that shorten the path to the goal (with gamma 1 any
    # move that keeps a path is optimal, above), and greedy play reaches the goal in the fewest moves, 6
    env = make_frozenlake(size=4, shaping=True)
    lake, phi = env.unwrapped, env.env.potential
    dist = frozenlake_distances(lake.desc).ravel()
    Q = _q_values(lake, phi, gamma)
    for s in (s for s in range(16) if lake.desc.flat[s] in b"SF"):
        shorter = {a for a in range(4) if dist[lake.P[s][a][0][1]] == dist[s] - 1}
        assert set(np.flatnonzero(np.isclose(Q[s], Q[s].max()))) == shorter, s
    _, steps, terminated, info = play_policy(env, Q.argmax(axis=1), GRID_MOVES)
    assert (steps, terminated, info["success"]) == (6, True, True)


def test_frozenlake_neighbours_name_what_lies_one_move_away():
    env = make_frozenlake(map_in_prompt=True, neighbours=True)
    obs, _ = env.reset(seed=0)
    assert obs.splitlines() == [
        "You are at row 1, column 1.",
        "Left: the edge, down: ice, right: ice, up: the edge.",
        "Which direction do you move? Answer with one word: left, down, right or up.",
    ]
    assert (
        play(env, ["right"])[0][0].splitlines()[1]
        == "Left: the start, down: a hole, right: ice, up: the edge."
    )
    play(env, ["right", "down", "down", "down"])  # to row 4, column 3
    assert (
        env.step("up")[0].splitlines()[1] == "Left: ice, down: ice, right: a hole, up: ice."
    )  # row 3, column 3
    assert env.step("down")[0].splitlines()[1] == "Left: ice, down: the edge, right: the goal, up: ice."
    assert "Left:" not in make_frozenlake(map_in_prompt=True).reset(seed=0)[0]  # off by default
    with pytest.raises(ValueError, match="neighbours=True needs map_in_prompt=True"):
        make_frozenlake(neighbours=True)


def test_frozenlake_exploring_starts_cover_every_square_but_holes_and_the_goal():
    """random_start: over 200 seeds the first square is each of the default map's 11 squares that are not a hole
    or the goal, the same seed gives the same square, the first observation names it, and the shaping starts
    from it (a move toward the goal from row 3, column 3 earns +1/6)."""
    env = make_frozenlake(map_in_prompt=True, shaping=True, random_start=True)
    check_env(env, skip_render_check=True)
    squares = {(row, col) for row in range(4) for col in range(4)} - {(1, 1), (1, 3), (2, 3), (3, 0), (3, 3)}
    seen = {}
    for seed in range(200):
        obs, _ = env.reset(seed=seed)
        seen[seed] = divmod(int(env.unwrapped.s), 4)
        assert obs.startswith(f"You are at row {seen[seed][0] + 1}, column {seen[seed][1] + 1}.")
    assert set(seen.values()) == squares
    env.reset(seed=7)
    assert divmod(int(env.unwrapped.s), 4) == seen[7]
    env.reset(seed=next(s for s, square in seen.items() if square == (2, 2)))
    assert env.step("down")[1] == pytest.approx(1 / 6)  # (2, 2) -> (3, 2): 2 moves from the goal -> 1


def test_frozenlake_edge_penalty_costs_a_move_into_the_edge_and_nothing_else():
    """edge_penalty: on a shortest path every move keeps its shaped reward (+1/6, the goal 1 + 1/6); a move into
    the edge leaves the player where it is and earns the penalty (its shaped reward is 0); slippery lakes refuse."""
    env = make_frozenlake(map_in_prompt=True, shaping=True, edge_penalty=-0.1)
    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    rewards = [env.step(move)[1] for move in ("up", "right", "right", "down", "down", "down", "down")]
    assert rewards == pytest.approx([-0.1] + [1 / 6] * 5 + [-0.1])
    assert divmod(int(env.unwrapped.s), 4) == (3, 2)
    assert env.step("right")[1:3] == (pytest.approx(1 + 1 / 6), True)
    with pytest.raises(ValueError, match="edge_penalty needs is_slippery=False"):
        make_frozenlake(is_slippery=True, edge_penalty=-0.1)


def test_unparseable_reply_leaves_state_unchanged():
    env = make_frozenlake(size=4, invalid_penalty=-0.25)
    env.reset(seed=0)
    state_text = env.step("down")[0]
    before = env.unwrapped.s
    obs, reward, terminated, truncated, info = env.step("I will jump over the hole!")
    assert (reward, terminated, truncated) == (-0.25, False, False)
    assert info["invalid_action"] is True and info["action"] is None and info["success"] is False
    assert env.unwrapped.s == before == 4
    assert obs.startswith("Your reply could not be read as a move. Reply with one of: left, down, right, up.")
    assert obs.splitlines()[2:6] == ["S F F F", "P H F H", "F F F H", "H F F G"]  # the same grid again
    assert obs.endswith("\n\n" + state_text)
    obs, reward, _, _, info = env.step("DOWN.")  # case-insensitive, and the env moves again
    assert (env.unwrapped.s, reward, info["invalid_action"]) == (8, 0.0, False)


def test_end_on_invalid_and_max_turns():
    env = make_frozenlake(size=4, end_on_invalid=True)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step("???")
    assert (reward, terminated, truncated, info["invalid_action"]) == (-0.1, True, False, True)
    env = make_frozenlake(size=4, max_turns=2)
    env.reset(seed=0)
    assert [s[3] for s in play(env, ["left", "???"])] == [False, True]  # invalid replies count as turns


def test_word_parser_reads_the_last_mention():
    parse = word_parser(GRID_MOVES)
    assert parse(None, "Not LEFT: going down") == 1
    assert parse(None, "up") == 3 and parse(None, " 2. ") == 2
    assert parse(None, "7") is None and parse(None, "leftover") is None and parse(None, "") is None
    taxi = word_parser(TAXI_MOVES, aliases={"pick up": "pickup"})
    assert taxi(None, "Pick up the passenger") == 4


def test_word_parser_can_refuse_a_reply_that_names_several_moves():
    strict = word_parser(GRID_MOVES, several="invalid")
    assert strict(None, "You can move left, down, right or") is None  # a list of moves is not an answer
    assert strict(None, "Not LEFT: going down") is None  # nor is reasoning that names two
    assert strict(None, "Down, down.") == 1 and strict(None, "I move right.") == 2 and strict(None, "3") == 3
    env = make_frozenlake(one_move=True)
    env.reset(seed=0)
    _, reward, _, _, info = env.step("left, down, right or")
    assert (reward, info["invalid_action"], env.unwrapped.s) == (-0.1, True, 0)
    assert word_parser(GRID_MOVES)(None, "left, down, right or") == 2  # the default reads the last one
    with pytest.raises(ValueError, match="several must be 'last' or 'invalid', got 'first'"):
        word_parser(GRID_MOVES, several="first")


def test_taxi_and_maze_solved_by_value_iteration_through_text():
    taxi = make_taxi()
    _, policy = value_iteration(taxi.unwrapped, gamma=0.99)
    total, steps, terminated, info = play_policy(taxi, policy, TAXI_MOVES, seed=0)
    assert terminated and info["success"] and total == 21 - steps  # -1 per move, +20 on delivery
    maze = make_maze(size=4, maze_seed=0)
    _, policy = value_iteration(maze.unwrapped, gamma=1.0)
    total, steps, terminated, info = play_policy(maze, policy, GRID_MOVES)
    shortest = bfs_distance(maze.unwrapped.wall, maze.unwrapped.start, maze.unwrapped.goal)
    assert (total, steps, terminated, info["success"]) == (-shortest, shortest, True, True)


def test_checkers_moves_by_number_or_notation():
    env = make_checkers()
    obs, _ = env.reset(seed=0)
    assert "1: b2-a3\n2: b2-c3\n3: d2-c3\n4: d2-e3\n5: f2-e3" in obs
    board = env.unwrapped.board.copy()
    _, reward, _, _, info = env.step("99")  # not a listed move: invalid, the env's random move never happens
    assert (info["invalid_action"], reward, env.unwrapped.board) == (True, -0.1, board)
    listed = list(env.unwrapped.moves)
    _, _, _, _, info = env.step("Move 1 loses a piece, so 2")  # the last number wins
    assert info["action"] == listed[1] and info["invalid_action"] is False and info["illegal_action"] is False
    env.reset(seed=0)
    _, _, _, _, info = env.step("I play d2-e3")
    s, d = divmod(info["action"], 4)
    assert (s, d) == (13, 1)  # d2 is square 13 (row 4, col 3), direction 1 is up-right


def test_calculator_tool_call_and_answer():
    env = CalculatorEnv()
    obs, info = env.reset(seed=0)
    assert obs.startswith(f"Question: What is {info['question']}?") and info["question"] == "64 + 51 + 27"
    obs, reward, terminated, truncated, info = env.step("Let me check. calculate: 12*7")
    assert obs.startswith("Calculator: 12 * 7 = 84\nTool calls left: 2.")
    assert (reward, terminated, truncated, info["tool_calls"], info["action"]) == (
        0.0,
        False,
        False,
        1,
        "calculate",
    )
    _, reward, terminated, _, info = env.step("answer: 142")
    assert (reward, terminated, info["success"]) == (1.0, True, True)
    env.reset(seed=0)
    obs, reward, terminated, _, info = env.step("Answer: 141")
    assert (reward, terminated, info["success"]) == (0.0, True, False) and "the answer was 142" in obs


def test_calculator_rejects_code_and_truncates(tmp_path):
    marker = tmp_path / "ran"
    env = CalculatorEnv(max_tool_calls=2)
    env.reset(seed=1)
    obs, reward, terminated, truncated, info = env.step(
        f"calculate: __import__('os').system('touch {marker}')"
    )
    assert (reward, terminated, truncated, info["invalid_action"]) == (-0.1, False, False, True)
    assert "only numbers, + - * / and parentheses are allowed" in obs and not marker.exists()
    _, reward, _, truncated, _ = env.step("calculate: (1 + 2) * 3")
    assert (reward, truncated) == (0.0, False)
    obs, reward, terminated, truncated, info = env.step("calculate: 1 + 1")  # third non-answer with 2 allowed
    assert (reward, terminated, truncated) == (0.0, False, True) and "No tool calls left" in obs
    assert safe_eval("7/2") == 3.5 and safe_eval("-(3 - 5) * 4") == 8
    for bad in ["2**10", "1/0", "x + 1", "len('ab')", "(1).real", "True + 1", "1 if 1 else 2"]:
        with pytest.raises(ValueError):
            safe_eval(bad)


def test_calculator_demonstrations_call_the_tool_on_the_question(tmp_path):
    from recipes.calculator_demos import main as write_demos
    from rlhf.envs.calculator import FORMAT, tool_call_demonstrations

    rows = tool_call_demonstrations(range(3), max_tool_calls=2)
    first = rows[0]
    assert [m["role"] for m in first["prompt"]] == ["system", "user"]
    assert "at most 2 times" in first["prompt"][0]["content"]
    assert first["prompt"][1]["content"].startswith("Question: What is 64 + 51 + 27?")
    assert first["completion"] == [{"role": "assistant", "content": "calculate: 64 + 51 + 27"}]
    for seed, row in enumerate(rows):  # each call, played in its env, returns the question's answer
        env = CalculatorEnv(max_tool_calls=2)
        _, info = env.reset(seed=seed)
        obs, reward, terminated, _, _ = env.step(row["completion"][0]["content"])
        assert obs.startswith(f"Calculator: {info['question']} = {int(env.answer)}\n") and reward == 0.0
    call, answer = tool_call_demonstrations([0], answers=True, max_tool_calls=2)
    assert call == first and answer["completion"] == [{"role": "assistant", "content": "answer: 142"}]
    assert answer["prompt"][2:] == [
        first["completion"][0],
        {"role": "user", "content": "Calculator: 64 + 51 + 27 = 142\nTool calls left: 1. " + FORMAT},
    ]
    out = tmp_path / "demos.jsonl"
    write_demos(["--output", str(out), "--num_seeds", "4"])
    assert [json.loads(line) for line in out.read_text().splitlines()] == tool_call_demonstrations(
        range(4), max_tool_calls=2
    )
    with pytest.raises(SystemExit):  # an existing file is never overwritten
        write_demos(["--output", str(out), "--num_seeds", "2"])
    assert len(out.read_text().splitlines()) == 4


def test_random_frozenlake_maps_are_seeded_and_solvable():
    maps = {}
    for seed in range(5):
        env = make_frozenlake(size=4, map_seed=seed)
        again = make_frozenlake(size=4, map_seed=seed)
        assert np.array_equal(env.unwrapped.desc, again.unwrapped.desc)
        assert env.reset(seed=0)[0] == again.reset(seed=0)[0]
        V, policy = value_iteration(env.unwrapped, gamma=0.99)
        assert V[0] > 0  # generate_random_map guarantees a path; value iteration finds it
        total, _, terminated, info = play_policy(env, policy, GRID_MOVES)
        assert (total, terminated, info["success"]) == (1.0, True, True)
        maps[seed] = env.unwrapped.desc.tobytes()
    assert maps[0] == b"SFFFHHFFFHHFHFFG" and maps[1] == b"SHFHFFHFFFFFFFFG"
    assert len(set(maps.values())) == 4  # seeds 2 and 3 happen to draw the same one-hole map
    assert make_frozenlake(size=8).unwrapped.desc.shape == (8, 8)


def test_parse_that_raises_names_env_and_reply():
    def parse(env, reply):
        raise KeyError("no such move")

    env = TextEnv(gym.make("FrozenLake-v1"), lambda env, obs: f"state {obs}", parse, "rules")
    env.reset(seed=0)
    with pytest.raises(ValueError) as excinfo:
        env.step("go\nnorth")
    message = str(excinfo.value)
    assert message == "FrozenLake-v1: parse raised on reply 'go\\nnorth': KeyError: 'no such move'"


def test_errors_name_the_env_and_the_valid_choices():
    with pytest.raises(TypeError, match=r"^FrozenLake-v1 is not a text env: .* wrap it in rlhf.envs.TextEnv"):
        check_text_env(gym.make("FrozenLake-v1"))
    with pytest.raises(
        ValueError, match="^unknown text env 'chess'; valid names: calculator, checkers, frozenlake"
    ):
        make_text_env("chess")
    env = TextEnv(gym.make("FrozenLake-v1"), lambda env, obs: "caf\u00e9", word_parser(GRID_MOVES), "rules")
    with pytest.raises(
        ValueError, match=r"^FrozenLake-v1: describe returned text outside the observation space"
    ):
        env.reset(seed=0)


def test_import_rlhf_does_not_import_gymnasium():
    code = "import rlhf, sys; assert 'gymnasium' not in sys.modules, 'gymnasium imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_random_reply_demonstrations_are_the_env_s_dialogues_with_uniform_replies():
    from rlhf.envs.text import random_reply_demonstrations

    def make():
        return make_frozenlake(map_in_prompt=True, neighbours=True, one_move=True, random_start=True)

    rows = random_reply_demonstrations(make(), range(200), GRID_MOVES, max_turns=8, rows_per_episode=2)
    assert rows == random_reply_demonstrations(make(), range(200), GRID_MOVES, 8, 2)  # a function of its args
    assert 200 < len(rows) <= 400  # an episode that ends in a hole on its first move gives one row
    counts = {m: sum(r["completion"][0]["content"] == m for r in rows) for m in GRID_MOVES}
    assert all(0.2 < c / len(rows) < 0.3 for c in counts.values()), counts  # about uniform: 1/4 each
    squares = set()
    # each prompt is the env's own dialogue: replaying its replies gives its observations
    for row in rows[:60]:
        prompt, env = row["prompt"], make()
        roles = [m["role"] for m in prompt]
        assert roles == ["system"] + ["user", "assistant"] * (len(prompt) // 2 - 1) + ["user"]
        seed = next(s for s in range(200) if make().reset(seed=s)[0] == prompt[1]["content"])
        obs, info = env.reset(seed=seed)
        assert prompt[0]["content"] == info["system_prompt"]
        for reply, observation in zip(prompt[2::2], prompt[3::2]):
            assert env.step(reply["content"])[0] == observation["content"]
        squares.add(int(env.unwrapped.s))
    assert len(squares) >= 8  # the replies were made on many squares, not only the start's row
    with pytest.raises(ValueError, match="rows_per_episode"):
        random_reply_demonstrations(make(), [0], GRID_MOVES, max_turns=8, rows_per_episode=0)


def test_frozenlake_demos_script_writes_the_rows_and_overwrites_nothing(tmp_path):
    from recipes.frozenlake_demos import main as write_demos
    from rlhf.envs.text import random_reply_demonstrations

    out = tmp_path / "demos.jsonl"
    write_demos(["--output", str(out), "--num_seeds", "5"])
    env = make_frozenlake(map_in_prompt=True, neighbours=True, one_move=True, shaping=True, random_start=True)
    expected = random_reply_demonstrations(env, range(5), GRID_MOVES, max_turns=8, rows_per_episode=2)
    assert [json.loads(line) for line in out.read_text().splitlines()] == expected
    with pytest.raises(SystemExit):  # an existing file is never overwritten
        write_demos(["--output", str(out), "--num_seeds", "2"])
    assert len(out.read_text().splitlines()) == len(expected)
    with pytest.raises(SystemExit):  # an unknown env argument: one line, nothing written
        write_demos(["--output", str(tmp_path / "other.jsonl"), "--env_kwargs", "{colour: blue}"])
    assert not (tmp_path / "other.jsonl").exists()
