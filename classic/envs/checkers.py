"""Checkers (draughts) on a 6x6 board against a random opponent.

Rules: 6 men a side on the dark squares of the two nearest rows; men move one square diagonally forward, kings
forward or back; captures are compulsory, a capture that can continue must continue (multi-jump: the same side
moves again, `info["action_mask"]` then only allows that piece's jumps), a man reaching the far row becomes a
king and its turn ends. The side to move with no legal move loses. 40 plies without a capture is a draw.

The agent plays "us" (+1 men, +2 kings), starting at the bottom (rows 4-5) and moving first; the env plays the
opponent's whole turn (-1/-2) inside `step`, with uniformly random legal moves. Reward +1 win, -1 loss, 0 draw.

Observation: the 18 dark squares, row by row, as int8 in [-2, 2]. Action: square * 4 + direction
(0 up-left, 1 up-right, 2 down-left, 3 down-right), Discrete(72); a direction is a step if the neighbour is
empty and a jump if it holds an opponent piece, so every legal move has exactly one action. Only actions in
`info["action_mask"]` are legal. An env must accept every action of its action space (gymnasium's `check_env`,
and agents that ignore the mask, e.g. `classic.reinforce`), so an illegal action is replaced by a uniformly
random legal move (drawn from the env's seeded `np_random`) and costs `ILLEGAL_MOVE_PENALTY`, added to that
step's reward; `info["illegal_action"]` says it happened. A random move rather than a no-op keeps the game what
the rules define: every step is one ply, so the 40-ply draw rule still ends every game, and an agent cannot
stall in a position by repeating illegal actions. Agents that use the mask (linear SARSA) never see it.

The board has ~10^8 reachable positions, too many for a Q table learned in a few hundred games, so the
learning test uses linear semi-gradient SARSA on `afterstate_features` (S&B Section 10.1).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

SIZE = 6
N_SQUARES = SIZE * SIZE // 2
DIRECTIONS = [(-1, -1), (-1, 1), (1, -1), (1, 1)]
N_FEATURES = 8
DRAW_PLIES = 40
ILLEGAL_MOVE_PENALTY = 0.1  # a tenth of a loss: enough to learn the mask, small next to the game's outcome


def _square(r: int, c: int) -> int:
    return r * (SIZE // 2) + c // 2 if 0 <= r < SIZE and 0 <= c < SIZE and (r + c) % 2 == 1 else -1


ROW_COL = [(r, c) for r in range(SIZE) for c in range(SIZE) if (r + c) % 2 == 1]
# NEIGHBOUR[s][d], JUMP[s][d]: square one and two steps away in direction d, or -1 off the board
NEIGHBOUR = [[_square(r + dr, c + dc) for dr, dc in DIRECTIONS] for r, c in ROW_COL]
JUMP = [[_square(r + 2 * dr, c + 2 * dc) for dr, dc in DIRECTIONS] for r, c in ROW_COL]


def initial_board() -> list[int]:
    return [-1 if r < 2 else (1 if r >= SIZE - 2 else 0) for r, _ in ROW_COL]


def _dirs(piece: int) -> tuple[int, ...]:
    if abs(piece) == 2:
        return (0, 1, 2, 3)
    return (0, 1) if piece > 0 else (2, 3)  # men of +1 move up, men of -1 move down


def legal_moves(board: list[int], side: int, only_from: int = -1) -> list[int]:
    """Actions (square * 4 + direction) for `side` (+1 or -1); jumps only if any jump exists."""
    steps, jumps = [], []
    for s in range(N_SQUARES) if only_from < 0 else (only_from,):
        piece = board[s]
        if piece * side <= 0:
            continue
        for d in _dirs(piece):
            n = NEIGHBOUR[s][d]
            if n < 0:
                continue
            if board[n] == 0:
                steps.append(s * 4 + d)
            elif board[n] * side < 0 and JUMP[s][d] >= 0 and board[JUMP[s][d]] == 0:
                jumps.append(s * 4 + d)
    return jumps if jumps or only_from >= 0 else steps


def apply_move(board: list[int], action: int) -> tuple[list[int], bool, int]:
    """New board, whether it was a capture, and the landing square if the same piece must jump again (else -1)."""
    s, d = divmod(action, 4)
    board = list(board)
    piece, side = board[s], 1 if board[s] > 0 else -1
    captured = board[NEIGHBOUR[s][d]] != 0
    to = JUMP[s][d] if captured else NEIGHBOUR[s][d]
    if captured:
        board[NEIGHBOUR[s][d]] = 0
    board[s], board[to] = 0, piece
    row = ROW_COL[to][0]
    if abs(piece) == 1 and row == (0 if side > 0 else SIZE - 1):
        board[to] = 2 * side  # promotion ends the turn
        return board, captured, -1
    again = captured and bool(legal_moves(board, side, only_from=to))
    return board, captured, to if again else -1


def afterstate_features(board: np.ndarray | list[int], action: int) -> np.ndarray:
    """Features of the position right after our move `action` (before the reply), for linear SARSA:
    bias, our men, our kings, their men, their kings (each / 6), our pieces they can capture next,
    their pieces we attack, and how far our men have advanced."""
    after, _, again = apply_move([int(x) for x in board], action)
    ours = [s for s in range(N_SQUARES) if after[s] > 0]
    hanging = set()
    if again < 0:  # their turn next: which of our pieces could they take?
        for a in legal_moves(after, -1):
            s, d = divmod(a, 4)
            if after[NEIGHBOUR[s][d]] > 0:
                hanging.add(NEIGHBOUR[s][d])
    attacked = {
        NEIGHBOUR[a // 4][a % 4] for a in legal_moves(after, 1) if after[NEIGHBOUR[a // 4][a % 4]] < 0
    }
    advance = sum(SIZE - 1 - ROW_COL[s][0] for s in ours if after[s] == 1)
    return np.array(
        [
            1.0,
            sum(p == 1 for p in after) / 6,
            sum(p == 2 for p in after) / 6,
            sum(p == -1 for p in after) / 6,
            sum(p == -2 for p in after) / 6,
            len(hanging) / 6,
            len(attacked) / 6,
            advance / 30,
        ]
    )


class CheckersEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 2}

    def __init__(self, render_mode: str | None = None) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(-2, 2, (N_SQUARES,), np.int8)
        self.action_space = gym.spaces.Discrete(N_SQUARES * 4)
        self.board = initial_board()
        self.moves, self.illegal = legal_moves(self.board, 1), False

    def _mask(self, moves: list[int]) -> np.ndarray:
        mask = np.zeros(N_SQUARES * 4, dtype=np.int8)
        mask[moves] = 1
        return mask

    def _result(self, reward: float, terminated: bool, winner: int | None = None) -> tuple:
        obs = np.array(self.board, dtype=np.int8)
        info = {"action_mask": self._mask(self.moves if not terminated else []), "winner": winner}
        info["illegal_action"] = self.illegal
        return obs, reward - ILLEGAL_MOVE_PENALTY * self.illegal, terminated, False, info

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.board, self.quiet_plies, self.illegal = initial_board(), 0, False
        self.moves = legal_moves(self.board, 1)
        info = {"action_mask": self._mask(self.moves), "winner": None, "illegal_action": False}
        return np.array(self.board, dtype=np.int8), info

    def _play(self, action: int) -> int:
        self.board, captured, again = apply_move(self.board, action)
        self.quiet_plies = 0 if captured else self.quiet_plies + 1
        return again

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = int(action)
        self.illegal = action not in self.moves
        if self.illegal:  # see the module docstring: a random legal move, and a penalty
            action = self.moves[self.np_random.integers(len(self.moves))]
        again = self._play(action)
        if again >= 0:  # our multi-jump continues: our move again
            self.moves = legal_moves(self.board, 1, only_from=again)
            return self._result(0.0, False)
        # the opponent's turn, possibly several jumps
        replies = legal_moves(self.board, -1)
        if not replies:
            return self._result(1.0, True, winner=1)
        while replies:
            again = self._play(replies[self.np_random.integers(len(replies))])
            replies = legal_moves(self.board, -1, only_from=again) if again >= 0 else []
        self.moves = legal_moves(self.board, 1)
        if not self.moves:
            return self._result(-1.0, True, winner=-1)
        if self.quiet_plies >= DRAW_PLIES:
            return self._result(0.0, True, winner=0)
        return self._result(0.0, False)

    def render(self) -> np.ndarray | str | None:
        grid = np.full((SIZE, SIZE), " ", dtype="<U1")
        for s, (r, c) in enumerate(ROW_COL):
            grid[r, c] = {0: ".", 1: "x", 2: "X", -1: "o", -2: "O"}[self.board[s]]
        if self.render_mode == "ansi":
            return "\n".join("".join(row) for row in grid) + "\n"
        if self.render_mode == "rgb_array":
            colours = {" ": (235, 220, 190), ".": (110, 70, 40), "x": (20, 20, 20), "X": (90, 90, 90)}
            colours |= {"o": (230, 40, 40), "O": (250, 140, 140)}
            img = np.array([[colours[ch] for ch in row] for row in grid], dtype=np.uint8)
            return img.repeat(16, axis=0).repeat(16, axis=1)
        return None
