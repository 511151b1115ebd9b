"""Text versions of gymnasium's toy-text games and the project's own envs, for language models.

Each factory makes the existing env (`gym.make`, so its time limit and registration stay) and wraps it in
`TextEnv` with a `describe` that draws the state as a grid or a short report, a `parse` that reads the move, and
a system prompt with the rules. Keyword arguments beyond the env's own go to `TextEnv` (`invalid_penalty`,
`end_on_invalid`, `max_turns`). Every env sets info["success"] after each step:

- frozenlake: reached the goal;       - taxi: delivered the passenger;   - maze: reached the exit;
- snake: ate `food_goal` pieces;      - checkers: won the game;          - trading: beat buy-and-hold at the end.

Moves named by words are parsed by `word_parser` (case-insensitive whole words, the last mention wins, or the
move's index as the whole reply); checkers moves are chosen by their number in the listed legal moves.
"""

from __future__ import annotations

import re
from functools import partial

import gymnasium as gym
import numpy as np
from gymnasium.envs.toy_text.frozen_lake import generate_random_map

import classic.envs  # noqa: F401  (registers the rlbook/ ids)
from classic.envs.checkers import JUMP, NEIGHBOUR, ROW_COL, SIZE
from rlhf.envs.text import TextEnv, word_parser

GRID_MOVES = ("left", "down", "right", "up")  # FrozenLake's and Maze's action order


def _hint(words: tuple[str, ...]) -> str:
    return f"Reply with one of: {', '.join(words)}."


# ---------------------------------------------------------------- FrozenLake


def _frozenlake_text(env: gym.Env, obs: int) -> str:
    desc = env.unwrapped.desc  # (nrow, ncol) bytes: S start, F frozen, H hole, G goal
    ncol = desc.shape[1]
    row, col = divmod(int(obs), ncol)
    rows = [[c.decode() for c in line] for line in desc]
    tile, rows[row][col] = rows[row][col], "P"
    grid = "\n".join(" ".join(line) for line in rows)
    status = {"H": "You fell into a hole. Game over.\n", "G": "You reached the goal!\n"}.get(tile, "")
    return (
        f"{grid}\n(P you, S start, F ice, H hole, G goal)\n"
        f"You are at row {row + 1}, column {col + 1}.\n{status}{_hint(GRID_MOVES)}"
    )


TILE_NAMES = {"S": "the start", "F": "ice", "H": "a hole", "G": "the goal"}
STEPS = ((0, -1), (1, 0), (0, 1), (-1, 0))  # (row, column) change of left, down, right, up


def _frozenlake_around(desc: np.ndarray, row: int, col: int) -> str:
    """What lies one move away in each direction, e.g. 'Left: the edge, down: a hole, right: ice, up: the edge.'"""
    seen = []
    for move, (dr, dc) in zip(GRID_MOVES, STEPS):
        r, c = row + dr, col + dc
        inside = 0 <= r < desc.shape[0] and 0 <= c < desc.shape[1]
        seen.append(f"{move}: {TILE_NAMES[desc[r][c].decode()] if inside else 'the edge'}")
    return ", ".join(seen).capitalize() + "."


def _frozenlake_position(env: gym.Env, obs: int, neighbours: bool = False) -> str:
    """The compact observation: the position and what is there (the map is in the system prompt), and with
    `neighbours` what lies one move away in each direction."""
    desc = env.unwrapped.desc
    row, col = divmod(int(obs), desc.shape[1])
    status = {"H": " You fell into a hole. Game over.", "G": " You reached the goal!"}.get(
        desc[row][col].decode(), ""
    )
    if status:
        return f"You are at row {row + 1}, column {col + 1}.{status}"
    around = f"\n{_frozenlake_around(desc, row, col)}" if neighbours else ""
    return (
        f"You are at row {row + 1}, column {col + 1}.{around}\n"
        "Which direction do you move? Answer with one word: left, down, right or up."
    )


def frozenlake_distances(desc: np.ndarray) -> np.ndarray:
    """Moves from each square to the goal along safe squares (breadth-first from G); -1 where there is no path
    (holes, and squares walled in by holes). `desc` is the env's (nrow, ncol) bytes map."""
    nrow, ncol = desc.shape
    dist = np.full((nrow, ncol), -1)
    frontier = [tuple(int(i) for i in np.argwhere(desc == b"G")[0])]
    dist[frontier[0]] = 0
    while frontier:
        row, col = frontier.pop(0)
        for r, c in ((row + dr, col + dc) for dr, dc in STEPS):
            if 0 <= r < nrow and 0 <= c < ncol and dist[r, c] < 0 and desc[r, c] != b"H":
                dist[r, c] = dist[row, col] + 1
                frontier.append((r, c))
    return dist


class DistanceShaping(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Potential-based reward shaping (Ng, Harada and Russell 1999) for FrozenLake: each step's reward gains
    phi(s') - phi(s), with phi = -(moves to the goal) / (the most moves any square needs), phi(goal) = 0 and
    phi = -1 in a hole or a square with no path. A step toward the goal earns +1/D, a step away -1/D, a hole
    -1 + (moves left)/D. Over an episode the shaping sums to phi(last) - phi(first). With an undiscounted return
    (gamma 1) this is Ng et al.'s theorem with one difference: a hole's potential is -1, not 0, which adds -1 to
    every move into a hole; on a non-slippery lake no optimal move enters a hole, so the optimal moves are the
    env's own (tests/rlhf/test_envs.py checks it by value iteration), while on a slippery one the penalty can
    make a risky route less attractive. What changes is that a policy that never reaches the goal still learns
    which moves help. info["env_reward"] keeps the unshaped reward; `.unwrapped` is still the FrozenLake a
    `classic` agent trains on."""

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        dist = frozenlake_distances(env.unwrapped.desc).ravel()
        self.potential = np.where(dist >= 0, -dist / max(int(dist.max()), 1), -1.0)
        self._phi = 0.0

    def reset(self, **kwargs) -> tuple[int, dict]:
        obs, info = self.env.reset(**kwargs)
        self._phi = float(self.potential[int(obs)])
        return obs, info

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        phi, self._phi = self._phi, float(self.potential[int(obs)])
        return obs, float(reward) + self._phi - phi, terminated, truncated, {**info, "env_reward": reward}


class ExploringStarts(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Each episode of a FrozenLake starts on a uniformly random square that is neither a hole nor the goal (drawn
    from the reset's seed): the textbook's exploring starts, so that a policy that always walks the same way from
    the start square still meets every square and every move's consequence there."""

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        self.starts = np.flatnonzero(~np.isin(env.unwrapped.desc.ravel(), [b"H", b"G"]))

    def reset(self, **kwargs) -> tuple[int, dict]:
        _, info = self.env.reset(**kwargs)
        lake = self.env.unwrapped
        lake.s = int(lake.np_random.choice(self.starts))
        return lake.s, info


class EdgePenalty(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """A move into the edge of a FrozenLake (which leaves the player where it is) gets `penalty` added to its
    reward. Such a move is never optimal on a lake that is not slippery; without the penalty it costs nothing now
    (its shaped reward is 0), which a policy that says "down" on every square never pays for on the bottom row."""

    def __init__(self, env: gym.Env, penalty: float) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, penalty=penalty)
        gym.Wrapper.__init__(self, env)
        self.penalty = penalty

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        lake = self.env.unwrapped
        row, col = divmod(int(lake.s), lake.desc.shape[1])
        dr, dc = STEPS[int(action)]
        inside = 0 <= row + dr < lake.desc.shape[0] and 0 <= col + dc < lake.desc.shape[1]
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, float(reward) + (0.0 if inside else self.penalty), terminated, truncated, info


def _at_goal(env: gym.Env, reward: float, terminated: bool, info: dict) -> bool:
    lake = (
        env.unwrapped
    )  # the tile, not the reward: a shaped reward is positive on every step toward the goal
    return bool(terminated and lake.desc.flat[int(lake.s)] == b"G")


def _frozenlake_rules(desc: np.ndarray, is_slippery: bool, map_in_prompt: bool) -> str:
    """The system prompt: the rules, the answer format, and the map when it is not redrawn every turn."""
    size = desc.shape[0]
    slippery = (
        "The ice is slippery: you move in the direction you chose only 1/3 of the time, otherwise in one of the "
        "two directions at right angles to it. "
        if is_slippery
        else ""
    )
    rules = (
        f"You are playing FrozenLake on a {size}x{size} grid. P is you, S the start, F frozen ice (safe), "
        "H a hole, G the goal. Reach G without falling into a hole: reaching G gives reward 1 and ends the game, "
        "a hole ends it with reward 0. Rows count from the top, columns from the left. Each turn move one "
        f"square: left, down, right or up; moving into the edge leaves you where you are. {slippery}"
        "Reply with one word: left, down, right or up."
    )
    if map_in_prompt:
        rows = "\n".join(" ".join(c.decode() for c in line) for line in desc)
        rules += f"\nThe map (S start, F ice, H hole, G goal):\n{rows}"
    return rules


def make_frozenlake(
    size: int = 4,
    is_slippery: bool = False,
    map_seed: int | None = None,
    map_in_prompt: bool = False,
    shaping: bool = False,
    one_move: bool = False,
    neighbours: bool = False,
    random_start: bool = False,
    edge_penalty: float = 0.0,
    **text_kwargs,
) -> TextEnv:
    """FrozenLake-v1 in text: gymnasium's 4x4 or 8x8 map, or with `map_seed` a random `size` x `size` map from
    `generate_random_map(size, seed=map_seed)` (which only returns maps with a path from start to goal).

    map_in_prompt: the map goes into the system prompt once and each observation is one line (the position and
    what is there), about a fifth of the tokens of redrawing the grid every turn.
    shaping: add `DistanceShaping`'s potential-based reward (the env's own reward is 1 at the goal and nothing
    else, which a model that never reaches the goal cannot learn from).
    one_move: a reply that names two different moves is invalid (`word_parser(several="invalid")`), not read
    as its last one.
    neighbours: each observation also says what lies one move away in each direction ("Left: the edge, down:
    ice, right: a hole, up: the edge."), with `map_in_prompt` only: a small model does not read its
    neighbourhood off the map in the system prompt.
    random_start: each episode starts on a random square that is neither a hole nor the goal (`ExploringStarts`).
    edge_penalty: added to the reward of a move into the edge (`EdgePenalty`; not slippery lakes only)."""
    if neighbours and not map_in_prompt:
        raise ValueError(
            "neighbours=True needs map_in_prompt=True (the full grid is redrawn every turn otherwise)"
        )
    if map_seed is None:
        if size not in (4, 8):
            raise ValueError(f"size must be 4 or 8 for the built-in maps (or give map_seed), got {size!r}")
        map_kwargs = {"map_name": f"{size}x{size}"}
    else:
        map_kwargs = {"desc": generate_random_map(size, seed=map_seed)}
    env = gym.make(
        "FrozenLake-v1", is_slippery=is_slippery, max_episode_steps=100 if size <= 4 else 200, **map_kwargs
    )
    system_prompt = _frozenlake_rules(env.unwrapped.desc, is_slippery, map_in_prompt)
    if random_start:
        env = ExploringStarts(env)
    if shaping:
        env = DistanceShaping(env)
    if edge_penalty:
        if is_slippery:
            raise ValueError(
                "edge_penalty needs is_slippery=False (a slippery move's direction is not the one chosen)"
            )
        env = EdgePenalty(env, edge_penalty)
    return TextEnv(
        env,
        partial(_frozenlake_position, neighbours=neighbours) if map_in_prompt else _frozenlake_text,
        word_parser(GRID_MOVES, several="invalid" if one_move else "last"),
        system_prompt,
        reply_hint=_hint(GRID_MOVES),
        success=_at_goal,
        **text_kwargs,
    )


# ---------------------------------------------------------------- Taxi

TAXI_MOVES = ("south", "north", "east", "west", "pickup", "dropoff")
TAXI_STOPS = "RGYB"  # the four stops, in the order of TaxiEnv.locs


def _taxi_text(env: gym.Env, obs: int) -> str:
    taxi = env.unwrapped
    row, col, passenger, destination = taxi.decode(int(obs))
    lines = [[c.decode() for c in line] for line in taxi.desc]
    lines[row + 1][2 * col + 1] = "T"
    where = {4: "in the taxi"}.get(passenger, f"waiting at {TAXI_STOPS[passenger % 4]}")
    status = "The passenger has been delivered!\n" if passenger == destination else ""
    return (
        "\n".join("".join(line) for line in lines)
        + f"\n(T taxi, R G Y B stops, | wall)\nThe taxi is at row {row + 1}, column {col + 1}. "
        f"The passenger is {where} and wants to go to {TAXI_STOPS[destination]}.\n{status}{_hint(TAXI_MOVES)}"
    )


def make_taxi(**text_kwargs) -> TextEnv:
    """Taxi-v4 in text (deterministic moves; 200-step time limit)."""
    system_prompt = (
        "You drive a taxi (T) on a 5x5 grid with four stops R, G, Y, B. Pick up the passenger at their stop and "
        "drop them off at their destination. Each move costs -1, a delivery gives +20 and ends the game, a "
        "pickup or dropoff in the wrong place costs -10. You cannot drive through walls (|). Rows count from "
        "the top, columns from the left; north is up. Reply with one word: south, north, east, west, pickup or "
        "dropoff."
    )
    return TextEnv(
        gym.make("Taxi-v4"),
        _taxi_text,
        word_parser(TAXI_MOVES, aliases={"pick up": "pickup", "drop off": "dropoff"}),
        system_prompt,
        reply_hint=_hint(TAXI_MOVES),
        success=lambda env, reward, terminated, info: terminated,  # Taxi ends only on a delivery
        **text_kwargs,
    )


# ---------------------------------------------------------------- Maze


def _maze_text(env: gym.Env, obs: int) -> str:
    maze = env.unwrapped
    chars = np.where(maze.wall, "#", ".").astype("<U1")
    chars[maze.start], chars[maze.goal] = "S", "G"
    here = maze.cells[int(obs)]
    chars[here] = "A"
    status = "You reached the exit!\n" if here == maze.goal else ""
    grid = "\n".join("".join(row) for row in chars)
    return f"{grid}\n(A you, # wall, . open, S start, G exit)\n{status}{_hint(GRID_MOVES)}"


def make_maze(size: int = 4, maze_seed: int = 0, max_episode_steps: int = 100, **text_kwargs) -> TextEnv:
    """rlbook/Maze-v0 in text: a `size` x `size` maze carved from `maze_seed`, drawn as a grid of # and ."""
    env = gym.make("rlbook/Maze-v0", size=size, maze_seed=maze_seed, max_episode_steps=max_episode_steps)
    system_prompt = (
        "You are in a maze (A). # is a wall, . an open square, G the exit. Reach the exit in as few moves as "
        "possible: each move costs -1. Moving into a wall leaves you where you are. Reply with one word: left, "
        "down, right or up."
    )
    return TextEnv(
        env,
        _maze_text,
        word_parser(GRID_MOVES),
        system_prompt,
        reply_hint=_hint(GRID_MOVES),
        success=lambda env, reward, terminated, info: terminated,  # the maze ends only at the exit
        **text_kwargs,
    )


# ---------------------------------------------------------------- Snake

SNAKE_MOVES = ("straight", "left", "right")
HEADING_NAMES = ("up", "right", "down", "left")  # classic.envs.snake.HEADINGS order


def _snake_text(env: gym.Env, obs: object) -> str:
    snake = env.unwrapped
    grid = np.full((snake.size, snake.size), ".", dtype="<U1")
    for cell in snake.body:
        grid[cell] = "o"
    grid[snake.body[0]] = "@"
    if snake.food is not None:
        grid[snake.food] = "*"
    return (
        "\n".join(" ".join(row) for row in grid)
        + f"\n(@ your head, o your body, * food, . empty)\nYou are moving {HEADING_NAMES[snake.heading]}. "
        f"Food eaten: {snake.eaten}.\nReply with one of: straight, left, right (turns are relative to your "
        "direction)."
    )


def make_snake(size: int = 6, food_goal: int = 3, **text_kwargs) -> TextEnv:
    """rlbook/Snake-v0 in text; success once `food_goal` pieces are eaten (the game itself goes on)."""
    system_prompt = (
        f"You play Snake on a {size}x{size} grid. @ is your head, o your body, * the food. Each turn you move one "
        "square: straight on, or turn left or right relative to the direction you are moving. Eating food gives "
        "+1 and makes you longer; hitting a wall or your own body gives -1 and ends the game. Reply with one "
        "word: straight, left or right."
    )
    return TextEnv(
        gym.make("rlbook/Snake-v0", size=size),
        _snake_text,
        word_parser(SNAKE_MOVES),
        system_prompt,
        reply_hint="Reply with one of: straight, left, right.",
        success=lambda env, reward, terminated, info: info["food"] >= food_goal,
        **text_kwargs,
    )


# ---------------------------------------------------------------- Checkers

CHECKERS_PIECES = {0: ".", 1: "x", 2: "X", -1: "o", -2: "O"}
MOVE_PATTERN = re.compile(r"\b([a-f][1-6][-x][a-f][1-6])\b|\b(\d+)\b", re.IGNORECASE)


def _square_name(square: int) -> str:
    r, c = ROW_COL[square]
    return f"{'abcdef'[c]}{SIZE - r}"  # columns a-f from the left, ranks 1-6 from the bottom (our side)


def _move_name(board: list[int], action: int) -> str:
    """'c2-d3' for a step, 'c2xe4' for a jump (a legal move's neighbour is occupied only when it jumps)."""
    s, d = divmod(action, 4)
    if board[NEIGHBOUR[s][d]] != 0:
        return f"{_square_name(s)}x{_square_name(JUMP[s][d])}"
    return f"{_square_name(s)}-{_square_name(NEIGHBOUR[s][d])}"


def _checkers_text(env: gym.Env, obs: object) -> str:
    game = env.unwrapped
    grid = np.full((SIZE, SIZE), "-", dtype="<U1")  # light squares, never used
    for s, (r, c) in enumerate(ROW_COL):
        grid[r, c] = CHECKERS_PIECES[game.board[s]]
    rows = [f"{SIZE - r} " + " ".join(grid[r]) for r in range(SIZE)]
    board = "\n".join(["  " + " ".join("abcdef"), *rows])
    moves = "\n".join(f"{i}: {_move_name(game.board, a)}" for i, a in enumerate(game.moves, start=1))
    return (
        f"{board}\n(x your men, X your kings, o their men, O their kings, . empty)\n"
        f"Your legal moves:\n{moves or '(none)'}\nReply with the number of your move."
    )


def _checkers_parse(env: gym.Env, reply: str) -> int | None:
    """The last move in the reply, named by its number in the list or written out ('c2-d3', 'c2xe4')."""
    game = env.unwrapped
    mentions = MOVE_PATTERN.findall(reply)
    if not mentions:
        return None
    notation, number = mentions[-1]
    if notation:
        names = [_move_name(game.board, a) for a in game.moves]
        return game.moves[names.index(notation.lower())] if notation.lower() in names else None
    index = int(number) - 1
    return game.moves[index] if 0 <= index < len(game.moves) else None


def make_checkers(**text_kwargs) -> TextEnv:
    """rlbook/Checkers-v0 in text, against its built-in random opponent; the model picks a listed move by number
    (or writes it, e.g. 'c2-d3'); anything else is an invalid reply, never the env's random illegal-move rule."""
    system_prompt = (
        "You play checkers on a 6x6 board as x (your men move up the board, towards rank 6; kings X move both "
        "ways) against o. Pieces move one square diagonally onto an empty square, or jump over an opponent's "
        "piece onto the empty square behind it, capturing it. Captures are compulsory and a piece that can "
        "keep jumping must. A man reaching the far rank becomes a king. You win (+1) when the opponent cannot "
        "move, you lose (-1) when you cannot; 40 moves (yours and theirs) without a capture is a draw. Reply with the number of "
        "your move from the list."
    )
    return TextEnv(
        gym.make("rlbook/Checkers-v0"),
        _checkers_text,
        _checkers_parse,
        system_prompt,
        reply_hint="Reply with the number of one of the listed moves.",
        success=lambda env, reward, terminated, info: info["winner"] == 1,
        **text_kwargs,
    )


# ---------------------------------------------------------------- Trading

TRADING_MOVES = ("sell", "hold", "buy")  # classic.envs.trading SELL, HOLD, BUY


def _trading_text(env: gym.Env, obs: object) -> str:
    market = env.unwrapped
    recent = np.expm1(market.log_returns[market.t : market.t + market.window]) * 100
    changes = ", ".join(f"{x:+.2f}%" for x in recent)
    position = "invested (long)" if market.position else "in cash (flat)"
    if market.t == market.episode_length:
        head = f"The trading period is over. Final portfolio value: {market.value:.4f}."
    else:
        head = f"Day {market.t + 1} of {market.episode_length}."
    return (
        f"{head}\nPrice changes over the last {market.window} days (oldest first): {changes}\n"
        f"You are {position}. Portfolio value: {market.value:.4f} (started at 1.0000).\n{_hint(TRADING_MOVES)}"
    )


def make_trading(episode_length: int = 20, window: int = 5, **text_kwargs) -> TextEnv:
    """rlbook/Trading-v0 in text (one asset, long or flat); success: the final value beats buy-and-hold."""
    system_prompt = (
        "You trade one asset over a number of days. Each day choose: buy (be invested in the asset), sell (be in "
        "cash), or hold (keep your current position). Your reward is the change in your portfolio value; each "
        "trade costs 0.1% of the value. The market has trends: up or down runs tend to persist for a while. "
        "Reply with one word: sell, hold or buy."
    )
    return TextEnv(
        gym.make("rlbook/Trading-v0", episode_length=episode_length, window=window),
        _trading_text,
        word_parser(TRADING_MOVES),
        system_prompt,
        reply_hint=_hint(TRADING_MOVES),
        success=lambda env, reward, terminated, info: terminated and info["value"] > info["buy_and_hold"],
        **text_kwargs,
    )
