"""A tool-use text env: an arithmetic question, a calculator the model may call, then a final answer.

Each episode asks one seeded question, e.g. "What is 37 * 12 - 45?" (`min_numbers` to `max_numbers` integers in
[1, max_operand] joined by the `operators`, usual precedence). The model replies either

- `calculate: <expression>`: a tool call. The calculator's result comes back as the next observation, reward 0.
  Expressions are parsed with `ast` and only numbers, + - * /, unary minus and parentheses are evaluated
  (`safe_eval`); anything else (names, calls, attributes, powers) is rejected as an invalid reply, never run.
- `answer: <number>`: ends the episode (terminated), reward 1 if it equals the answer (within 1e-6), else 0.

If a reply holds several of these, the last one counts. Every reply that is not an answer (a tool call or an
invalid reply) uses one of `max_tool_calls` turns; a reply that is not an answer once they are used up ends
the episode (truncated, the tool is not run). An invalid reply (neither form, a rejected expression, a division
by zero) gets `invalid_penalty` and info["invalid_action"] True, as in `TextEnv`. Step info: `invalid_action`,
`action` ("calculate", "answer" or None), `success` (a correct answer), `tool_calls` (used so far).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Iterable

import gymnasium as gym

from rlhf.envs.text import MAX_OBS_LENGTH, MAX_REPLY_LENGTH, text_space

OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
MAX_EXPRESSION_LENGTH = 200  # bounds the parse's recursion depth and the size of the numbers
DIRECTIVE = re.compile(r"\b(calculate|answer)\s*:\s*([^\n]*)", re.IGNORECASE)
NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
FORMAT = (
    "Reply `calculate: <expression>` to use the calculator, or `answer: <number>` to give your final answer."
)


def safe_eval(expression: str) -> int | float:
    """The value of an arithmetic expression of numbers, + - * /, unary +/- and parentheses. The text is parsed
    with `ast`, and only those nodes are evaluated: nothing is ever passed to `eval`. Raises ValueError (reason)."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError("not an arithmetic expression") from None
    value = _value(tree.body)
    if not math.isfinite(value):
        raise ValueError("result too large")
    return value


def _value(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # bool and complex are excluded
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        operand = _value(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ValueError("division by zero")
        return OPERATORS[type(node.op)](left, right)
    raise ValueError(f"only numbers, + - * / and parentheses are allowed, not {type(node).__name__}")


def format_number(x: int | float) -> str:
    """84 for 84 and 84.0; up to 10 significant digits otherwise."""
    if isinstance(x, int) or (x.is_integer() and abs(x) < 1e15):
        return str(int(x))
    return f"{x:.10g}"


class CalculatorEnv(gym.Env):
    """Arithmetic with a calculator tool; see the module docstring. Observations and replies are text."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        min_numbers: int = 2,
        max_numbers: int = 3,
        max_operand: int = 99,
        operators: str = "+-*",
        max_tool_calls: int = 3,
        invalid_penalty: float = -0.1,
        render_mode: str | None = None,
    ) -> None:
        if not 2 <= min_numbers <= max_numbers:
            raise ValueError(f"need 2 <= min_numbers <= max_numbers, got {min_numbers}, {max_numbers}")
        if max_operand < 1 or not operators or set(operators) - set("+-*/"):
            raise ValueError(
                f"need max_operand >= 1 and operators from '+-*/', got {max_operand}, {operators!r}"
            )
        if max_tool_calls < 0:
            raise ValueError(f"max_tool_calls must be >= 0, got {max_tool_calls}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.min_numbers, self.max_numbers, self.max_operand = min_numbers, max_numbers, max_operand
        self.operators, self.max_tool_calls, self.invalid_penalty = operators, max_tool_calls, invalid_penalty
        self.render_mode = render_mode
        self.observation_space = text_space(MAX_OBS_LENGTH)
        self.action_space = text_space(MAX_REPLY_LENGTH)
        self.system_prompt = (
            "You answer arithmetic questions. You have a calculator: reply `calculate: <expression>` "
            "(numbers, + - * / and parentheses) and its result comes back as the next message; you may use it "
            f"at most {max_tool_calls} times. When you know the result, reply `answer: <number>`. A correct "
            "answer gives reward 1, a wrong one 0, and the answer ends the episode."
        )
        self.question, self.answer, self.tool_calls, self.last_obs = "", 0, 0, ""

    def _turns_left(self) -> str:
        return f"Tool calls left: {self.max_tool_calls - self.tool_calls}. {FORMAT}"

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        n = int(self.np_random.integers(self.min_numbers, self.max_numbers + 1))
        numbers = self.np_random.integers(1, self.max_operand + 1, size=n)
        ops = self.np_random.choice(list(self.operators), size=n - 1)
        self.question = " ".join([str(numbers[0])] + [f"{op} {x}" for op, x in zip(ops, numbers[1:])])
        self.answer, self.tool_calls = safe_eval(self.question), 0
        self.last_obs = f"Question: What is {self.question}?\n{self._turns_left()}"
        return self.last_obs, {"system_prompt": self.system_prompt, "question": self.question}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        directives = DIRECTIVE.findall(action)
        kind, argument = (directives[-1][0].lower(), directives[-1][1]) if directives else (None, "")
        info = {"invalid_action": False, "action": kind, "success": False, "tool_calls": self.tool_calls}
        number = NUMBER.search(argument.replace(",", "")) if kind == "answer" else None
        if number is not None:
            info["success"] = abs(float(number.group()) - self.answer) < 1e-6
            verdict = "correct" if info["success"] else f"wrong; the answer was {format_number(self.answer)}"
            self.last_obs = f"Your answer {number.group()} is {verdict}."
            return self.last_obs, float(info["success"]), True, False, info
        if self.tool_calls == self.max_tool_calls:  # not an answer, and no turn left: the tool is not run
            info["invalid_action"] = kind != "calculate"
            self.last_obs = "No tool calls left and no answer given: the episode is over."
            return (
                self.last_obs,
                float(self.invalid_penalty if info["invalid_action"] else 0.0),
                False,
                True,
                info,
            )
        self.tool_calls = info["tool_calls"] = self.tool_calls + 1
        if kind == "calculate":
            expression = argument.strip().strip("`").strip()
            try:
                result = safe_eval(expression)
            except ValueError as e:
                error = f"the calculator rejected the expression: {e}"
            else:
                canonical = ast.unparse(ast.parse(expression, mode="eval"))  # ASCII, whatever was written
                self.last_obs = f"Calculator: {canonical} = {format_number(result)}\n{self._turns_left()}"
                return self.last_obs, 0.0, False, False, info
        else:
            error = "no number after `answer:`" if kind == "answer" else "no `calculate:` or `answer:` found"
        info["invalid_action"] = True
        self.last_obs = f"Your reply could not be used ({error}).\n{self._turns_left()}"
        return self.last_obs, float(self.invalid_penalty), False, False, info

    def render(self) -> str | None:
        return self.last_obs if self.render_mode == "ansi" else None


def make_calculator(**kwargs) -> CalculatorEnv:
    """A `CalculatorEnv`; keyword arguments as its constructor."""
    return CalculatorEnv(**kwargs)


def tool_call_demonstrations(seeds: Iterable[int], answers: bool = False, **env_kwargs) -> list[dict]:
    """A format warm-start for TRL's SFTTrainer: for each seed, the episode's first turn (the system prompt and
    the question as chat messages) and, as the completion, a call of the calculator on the question:
    `calculate: 37 * 12 - 45`. With `answers`, a second row per seed continues the dialogue (the call, the
    calculator's reply) with `answer: <its result>` as the completion. Rows are conversational prompt/completion
    dicts."""
    env = CalculatorEnv(**env_kwargs)
    rows = []
    for seed in seeds:
        obs, info = env.reset(seed=int(seed))
        call = {"role": "assistant", "content": f"calculate: {info['question']}"}
        prompt = [{"role": "system", "content": info["system_prompt"]}, {"role": "user", "content": obs}]
        rows.append({"prompt": prompt, "completion": [call]})
        if answers:
            result = env.step(call["content"])[0]
            answer = {"role": "assistant", "content": f"answer: {format_number(env.answer)}"}
            rows.append(
                {"prompt": [*prompt, call, {"role": "user", "content": result}], "completion": [answer]}
            )
    return rows
