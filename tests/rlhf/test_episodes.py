"""Multi-turn episodes: the trajectory layout (token in / token out), the advantage convention by hand, and the
update's independence from observation tokens."""

import dataclasses
from types import SimpleNamespace

import gymnasium as gym
import pytest
import torch

from rlhf import PPOConfig, PPOTrainer
from rlhf.advantages import compute_trajectory_advantages
from rlhf.batch import Experience, Samples, fold_turns
from rlhf.envs import make_frozenlake
from rlhf.episodes import ChatFormat, run_episodes, state_id
from rlhf.tiny import build_causal_lm, build_tokenizer
from rlhf.update import LossSettings, TrainedModels, loss_and_backward

# one episode of three turns: reply_1 (2 tokens) | obs (2) | reply_2 (1) | obs (1) | reply_3 (2)
ACTIONS = torch.tensor([[1.0, 1, 0, 0, 1, 0, 1, 1]])
TURN_ENDS = torch.tensor([[0.0, 1, 0, 0, 1, 0, 0, 1]])
TURN_REWARDS = torch.tensor([[0.0, 0.5, 0, 0, 0.0, 0, 0, 1.0]])
VALUES = torch.tensor([[0.1, 0.2, 9.0, 9.0, 0.3, 9.0, 0.4, 0.5]])  # 9: observation positions, never read


def trajectory(estimator, values=VALUES, kl=None, **kw):
    return compute_trajectory_advantages(
        estimator, torch.tensor([1.5]), torch.zeros(1, 8) if kl is None else kl, kw.pop("kl_coef", 0.0),
        ACTIONS, TURN_ENDS, TURN_REWARDS, values=values, gamma=0.9, gae_lambda=0.8, whiten=False, **kw,
    )  # fmt: skip


def test_gae_over_three_turns_by_hand():
    """Action tokens a0..a4 with values .1 .2 .3 .4 .5; gamma 0.9 after a turn's last token (a1, a2), 1 inside a
    reply (a0, a3); lambda 0.8; the episode ends after a4.
    d4 = 1 - .5 = .5                      A4 = .5
    d3 = 0 + .5 - .4 = .1                 A3 = .1 + .8 * .5 = .5
    d2 = 0 + .9 * .4 - .3 = .06           A2 = .06 + .9 * .8 * .5 = .42
    d1 = .5 + .9 * .3 - .2 = .57          A1 = .57 + .9 * .8 * .42 = .8724
    d0 = 0 + .2 - .1 = .1                 A0 = .1 + .8 * .8724 = .79792"""
    advantages, returns = trajectory("gae")
    expected = torch.tensor([[0.79792, 0.8724, 0, 0, 0.42, 0, 0.5, 0.5]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, (expected + VALUES) * ACTIONS)
    # whatever sits on observation positions (values, KL) is never read
    garbage = torch.where(ACTIONS.bool(), VALUES, torch.full_like(VALUES, -77.0))
    torch.testing.assert_close(trajectory("gae", values=garbage)[0], expected)
    kl = torch.where(ACTIONS.bool(), torch.zeros(1, 8), torch.full((1, 8), 50.0))
    torch.testing.assert_close(trajectory("gae", kl=kl, kl_coef=0.1)[0], expected)


def test_gae_kl_penalty_on_action_tokens_by_hand():
    """beta * KL = 0.1 on every action token: each delta drops by .1, so
    A4 = .4, A3 = 0 + .8 * .4 = .32, A2 = -.04 + .72 * .32 = .1904, A1 = .47 + .72 * .1904 = .607088,
    A0 = 0 + .8 * .607088 = .4856704."""
    kl = torch.where(ACTIONS.bool(), torch.ones(1, 8), torch.full((1, 8), 50.0))
    advantages, _ = trajectory("gae", kl=kl, kl_coef=0.1)
    torch.testing.assert_close(advantages, torch.tensor([[0.4856704, 0.607088, 0, 0, 0.1904, 0, 0.32, 0.4]]))


def test_critic_free_estimators_use_the_episode_return_at_the_last_action_token():
    """reinforce_pp (no baseline): the return 1.5 on the last action token, returns-to-go discounted by 0.9 per
    turn: a3, a4 get 1.5, a2 1.35, a0, a1 1.215 (= .81 * 1.5)."""
    advantages, _ = trajectory("reinforce_pp")
    torch.testing.assert_close(advantages, torch.tensor([[1.215, 1.215, 0, 0, 1.35, 0, 1.5, 1.5]]))


# two episodes: row 0 replies in states 11 then 22 (rewards .5, 1); row 1 in 11, 33, 22 (rewards 0, -1, 0)
STEP_ACTIONS = torch.tensor([[1.0, 1, 0, 0, 1, 1, 0], [1.0, 0, 0, 1, 0, 1, 0]])
STEP_ENDS = torch.tensor([[0.0, 1, 0, 0, 0, 1, 0], [1.0, 0, 0, 1, 0, 1, 0]])
STEP_REWARDS = torch.tensor([[0.0, 0.5, 0, 0, 0, 1.0, 0], [0.0, 0, 0, -1.0, 0, 0, 0]])
STEP_STATES = torch.tensor([[0, 11, 0, 0, 0, 22, 0], [11, 0, 0, 33, 0, 22, 0]])


def test_step_group_advantages_by_hand():
    """gamma .5. Returns-to-go: row 0: G = 0.5 + .5 * 1 = 1 (state 11), 1 (22); row 1: 0 + .5 * -1 = -.5 (11),
    -1 + 0 = -1 (33), 0 (22). Groups: 11 {1, -.5} mean .25; 22 {1, 0} mean .5; 33 {-1} alone -> 0.
    scale none: row 0 replies +.75, +.5; row 1 -.75, 0, -.5, on every token of each reply.
    scale group: divided by the group's sample std + 1e-4: 11: sqrt(2 * .75^2) = 1.0606602; 22: sqrt(.5)."""
    from rlhf.advantages import step_group_advantages

    args = (STEP_ACTIONS, STEP_ENDS, STEP_REWARDS, STEP_STATES, 0.5)
    none = step_group_advantages(*args, scale="none")
    torch.testing.assert_close(
        none, torch.tensor([[0.75, 0.75, 0, 0, 0.5, 0.5, 0], [-0.75, 0, 0, 0, 0, -0.5, 0]])
    )
    a, b = 0.75 / (1.0606602 + 1e-4), 0.5 / (0.7071068 + 1e-4)
    torch.testing.assert_close(
        step_group_advantages(*args, scale="group"),
        torch.tensor([[a, a, 0, 0, b, b, 0], [-a, 0, 0, 0, 0, -b, 0]]),
    )
    # gigpo = grpo over the two episode returns (1.5 and -1: a group of 2) + the step-level term
    kw = dict(gamma=0.5, whiten=False, group_size=2, turn_states=STEP_STATES, scale_rewards="none")
    scores, kl = torch.tensor([1.5, -1.0]), torch.zeros(2, 7)
    gigpo, _ = compute_trajectory_advantages(
        "gigpo", scores, kl, 0.0, STEP_ACTIONS, STEP_ENDS, STEP_REWARDS, **kw
    )
    grpo, _ = compute_trajectory_advantages(
        "grpo", scores, kl, 0.0, STEP_ACTIONS, STEP_ENDS, STEP_REWARDS, **kw
    )
    torch.testing.assert_close(gigpo, grpo + none)
    assert grpo[0, 5] == 1.25 and grpo[1, 5] == -1.25  # (1.5 - .25) at each episode's last reply
    with pytest.raises(ValueError, match="needs env episodes"):
        compute_trajectory_advantages(
            "gigpo", scores, kl, 0.0, STEP_ACTIONS, STEP_ENDS, STEP_REWARDS, group_size=2
        )


class Table(torch.nn.Module):
    """A 'language model' whose logits are a parameter table (batch, positions, vocab): every logit's gradient can
    be read off directly."""

    def __init__(self, batch, positions, vocab, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.logits = torch.nn.Parameter(torch.randn(batch, positions, vocab, generator=g))

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
        return SimpleNamespace(logits=self.logits)


class ValueTable(torch.nn.Module):
    def __init__(self, batch, positions):
        super().__init__()
        self.values = torch.nn.Parameter(torch.linspace(-1, 1, batch * positions).view(batch, positions))

    def forward(self, input_ids, attention_mask, position_ids):
        return self.values


def episode_experience(vocab=7):
    g = torch.Generator().manual_seed(0)
    response_ids = torch.randint(0, vocab, (1, 8), generator=g)
    query = torch.ones(1, 2, dtype=torch.long)
    return Experience(
        query, torch.ones(1, 2), response_ids, torch.ones(1, 8), ACTIONS.clone(),
        advantages=torch.randn(1, 8, generator=g), returns=torch.randn(1, 8, generator=g),
        scores=torch.tensor([1.0]), old_logprobs=-torch.rand(1, 8, generator=g) - 1,
        ref_logprobs=-torch.rand(1, 8, generator=g) - 1, old_values=torch.randn(1, 8, generator=g),
        action_mask=ACTIONS.clone(),
    )  # fmt: skip


def test_observation_tokens_get_exactly_zero_gradient_from_every_loss_term(tmp_path):
    """Clipped surrogate, entropy bonus, k3 KL in the loss and the clipped value loss: the logit rows that predict
    observation tokens (and the values before them) get a gradient of exactly 0; every action row gets one."""
    from accelerate import Accelerator

    policy, critic = Table(1, 10, 7, seed=1), ValueTable(1, 10)
    # old values near the current ones, so the value clip does not zero any action token's gradient
    exp = dataclasses.replace(episode_experience(), old_values=critic.values.detach()[:, 1:9] + 0.05)
    models = TrainedModels(
        policy, torch.optim.SGD(policy.parameters()), critic, torch.optim.SGD(critic.parameters())
    )
    loss = LossSettings(entropy_coef=0.05, kl_estimator="k3", kl_in_loss=True, max_new_tokens=8)
    sums = {}
    loss_and_backward(
        Accelerator(cpu=True), models, exp, loss, 0.2, torch.tensor(5.0), 1.0, sums, share_prompts=False
    )
    # response token j is predicted at position prompt_len - 1 + j = 1 + j
    row_grad = policy.logits.grad[0, 1:9].abs().sum(-1)  # (8,)
    value_grad = critic.values.grad[0, 1:9].abs()
    obs = ACTIONS[0] == 0
    assert (row_grad[obs] == 0).all() and (value_grad[obs] == 0).all()
    assert (row_grad[~obs] > 0).all() and (value_grad[~obs] > 0).all()
    assert sums["tokens"].item() == 5.0  # the statistics count the 5 action tokens


def test_what_sits_on_observation_positions_changes_nothing_in_the_update(tmp_path):
    """Two experiences that differ only on observation tokens (advantages, old / reference log-probs, returns,
    old values) give bitwise the same weight change and the same statistics."""
    from accelerate import Accelerator

    exp = episode_experience()
    obs = ACTIONS == 0
    noisy = dataclasses.replace(
        exp, **{k: torch.where(obs, torch.full_like(getattr(exp, k), v), getattr(exp, k))
                for k, v in (("advantages", 1e3), ("old_logprobs", -30.0), ("ref_logprobs", 5.0),
                             ("returns", -1e3), ("old_values", 7e2))},
    )  # fmt: skip
    results = []
    for e in (exp, noisy):
        policy, critic = Table(1, 10, 7, seed=1), ValueTable(1, 10)
        models = TrainedModels(policy, torch.optim.SGD(policy.parameters(), lr=0.1), critic,
                               torch.optim.SGD(critic.parameters(), lr=0.1))  # fmt: skip
        loss = LossSettings(entropy_coef=0.05, kl_estimator="k3", kl_in_loss=False, max_new_tokens=8)
        sums = {}
        loss_and_backward(Accelerator(cpu=True), models, e, loss, 0.2, torch.tensor(5.0), 1.0, sums, False)
        results.append(
            (policy.logits.grad.clone(), critic.values.grad.clone(), {k: v.item() for k, v in sums.items()})
        )
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]
    assert results[0][2]["kl_rows"] == 1.0 and results[0][2]["tokens"] == 5.0


# --- the episode runner ----------------------------------------------------------------------------------------


class Scripted:
    """A Generator stand-in that 'samples' the given token ids, one list per row per call, in order."""

    def __init__(self, replies, eos, pad, max_new_tokens=6):
        self.replies, self.eos, self.pad = list(replies), eos, pad
        self.max_new_tokens, self.temperature, self.calls = max_new_tokens, 1.0, []

    def generate(self, query_ids, query_mask):
        rows = [self.replies.pop(0) for _ in range(len(query_ids))]
        self.calls.append((query_ids.clone(), query_mask.clone()))
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [self.pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in rows])
        logprobs = -mask * 0.5
        return Samples(query_ids, query_mask, ids, mask, logprobs)


@pytest.fixture(scope="module")
def lake_tokenizer():
    env = make_frozenlake()
    obs, info = env.reset(seed=0)
    return build_tokenizer([info["system_prompt"], obs, "left down right up"] * 20, vocab_size=400)


def test_episode_layout_token_in_token_out(lake_tokenizer):
    """The optimal path as replies whose ids are NOT what the tokenizer would produce for their text ('d'+'own'):
    the sequence keeps them exactly as 'sampled'; observations sit between replies with action mask 0; each
    turn's reward is on its reply's last token."""
    tok = lake_tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id

    def split_word(word):  # one id per character: a tokenisation the tokenizer itself never produces
        return [tok.convert_tokens_to_ids(c) for c in word]

    moves = ["down", "down", "right", "right", "down", "right"]
    replies = [split_word(w) + [eos] for w in moves]
    assert (
        tok(moves[0], add_special_tokens=False)["input_ids"] != replies[0][:-1]
    )  # re-tokenising changes them
    gen = Scripted(replies, eos, pad, max_new_tokens=6)
    batch = run_episodes(gen, tok, [make_frozenlake()], [0], max_turns=8, max_length=4096)
    s = batch.samples
    acts = s.action_mask[0].bool()
    assert s.response_ids[0][acts].tolist() == sum(replies, [])  # exactly the sampled ids, in order
    assert s.turn_ends[0].sum() == 6 and s.env_rewards[0].sum() == 1.0
    ends = s.turn_ends[0].nonzero().squeeze(1)
    assert s.env_rewards[0, ends].tolist() == [0.0] * 5 + [1.0]
    # each reply's state: the id of the observation it answered (the reset's, then each turn's), 0 elsewhere
    seen = [make_frozenlake().reset(seed=0)[0]] + [t["observation"] for t in batch.dialogues[0]["turns"][:-1]]
    assert s.turn_states[0, ends].tolist() == [state_id(o) for o in seen] and len(set(seen)) == 6
    assert s.turn_states[0].count_nonzero() == 6
    assert s.response_mask[0].sum() == s.response_mask.shape[1] and ends[-1] == s.response_mask.shape[1] - 1
    assert (s.sampled_logprobs[0][acts] == -0.5).all() and (s.sampled_logprobs[0][~acts] == 0).all()
    assert batch.stats["success_rate"] == 1.0 and batch.stats["episode_turns"] == 6.0
    assert batch.dialogues[0]["turns"][0]["reply"] == "down" and batch.dialogues[0]["return"] == 1.0
    # each turn's query is the previous query + the reply + the observation, as ids: nothing re-tokenised
    q1, q2 = (q[0][m[0].bool()].tolist() for q, m in gen.calls[:2])
    obs_ids = ChatFormat(tok).observation_ids("", batch.dialogues[0]["turns"][0]["observation"], True)
    assert q2 == q1 + replies[0] + obs_ids


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chat_format_reproduces_the_template_of_the_whole_dialogue():
    """With a chat template, prompt + reply (ending with the end-of-turn token) + observation ids equal the
    template applied to the whole conversation (when the reply's ids are the tokenizer's own)."""
    tok = build_tokenizer(
        ["system rules here", "observation one", "a reply", "observation two"] * 20, vocab_size=300
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    tok.eos_token = "<|im_end|>"
    fmt = ChatFormat(tok)
    reply = tok("a reply", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = fmt.prompt_ids("system rules", "observation one") + reply
    ids += fmt.observation_ids("system rules", "observation two", reply_ended=True)
    conversation = [
        {"role": "system", "content": "system rules"},
        {"role": "user", "content": "observation one"},
        {"role": "assistant", "content": "a reply"},
        {"role": "user", "content": "observation two"},
    ]
    text = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    # a reply cut off before its end-of-turn token gets the template's closing tokens as observation ids
    cut = fmt.observation_ids("system rules", "observation two", reply_ended=False)
    assert cut[:1] == [tok.eos_token_id] and cut[1:] == fmt.observation_ids(
        "system rules", "observation two", True
    )


# --- bad input ----------------------------------------------------------------------------------------------


class Exploding(gym.Env):
    observation_space = gym.spaces.Text(100)
    action_space = gym.spaces.Text(100)

    def reset(self, *, seed=None, options=None):
        return "start", {}

    def step(self, action):
        raise KeyError("the board is on fire")


def test_env_errors_name_the_env_seed_and_turn(lake_tokenizer):
    tok = lake_tokenizer
    gen = Scripted([[5, tok.eos_token_id]], tok.eos_token_id, tok.pad_token_id)
    with pytest.raises(
        RuntimeError, match=r"Exploding \(seed 7, turn 1\): step raised KeyError: 'the board is on fire'"
    ):
        run_episodes(gen, tok, [Exploding()], [7], max_turns=3, max_length=4096)
    with pytest.raises(
        ValueError,
        match=r"FrozenLake-v1 \(seed 3, turn 1\): the first observation is \d+ tokens.*context window \(64",
    ):
        run_episodes(gen, tok, [make_frozenlake()], [3], max_turns=3, max_length=64)


def test_trainer_refuses_a_non_text_env_and_zero_turns(tmp_path, lake_tokenizer):
    policy = build_causal_lm(lake_tokenizer, seed=0, n_positions=1024)
    args = PPOConfig(
        output_dir=str(tmp_path / "a"), rollout_batch_size=2, mini_batch_size=2, micro_batch_size=2
    )
    with pytest.raises(TypeError, match="not a text env.*TextEnv"):
        PPOTrainer(policy, None, args, processing_class=lake_tokenizer,
                   env_factory=lambda: gym.make("FrozenLake-v1"), train_seeds=range(4))  # fmt: skip
    with pytest.raises(ValueError, match="train_seeds: an env run needs at least"):
        PPOTrainer(
            policy, None, args, processing_class=lake_tokenizer, env_factory=make_frozenlake, train_seeds=[1]
        )
    with pytest.raises(ValueError, match="max_turns must be positive"):
        PPOConfig(max_turns=0)
    with pytest.raises(ValueError, match="history_turns must be None or >= 0, got -1"):
        PPOConfig(history_turns=-1)
    # one row per turn: micro_batch_size counts turns, mini_batch_size episodes
    with pytest.raises(ValueError, match=r"micro_batch_size=3 must divide mini_batch_size=2 \* max_turns=4"):
        PPOConfig(history_turns=0, max_turns=4, rollout_batch_size=2, mini_batch_size=2, micro_batch_size=3)
    assert (
        PPOConfig(
            history_turns=0, max_turns=4, mini_batch_size=2, micro_batch_size=4
        ).gradient_accumulation_steps
        == 2
    )


# --- the trainer on env episodes -------------------------------------------------------------------------------


def env_config(out, estimator, **kw):
    group = 1 if estimator == "gae" else 2
    kw = {"max_steps": 3, **kw}
    return PPOConfig(
        output_dir=str(out), rollout_batch_size=2, num_generations=group, mini_batch_size=2 * group,
        micro_batch_size=group, max_new_tokens=4, max_turns=3, advantage_estimator=estimator, kl_coef=0.05,
        learning_rate=1e-3, critic_learning_rate=1e-3, disable_tqdm=True, plot_metrics=False, seed=5, **kw,
    )  # fmt: skip


def env_trainer(args, tokenizer):
    return PPOTrainer(
        build_causal_lm(tokenizer, seed=0, n_positions=1024), None, args, processing_class=tokenizer,
        env_factory=make_frozenlake, train_seeds=range(8), eval_seeds=[100, 101, 102],
    )  # fmt: skip


def final_weights(trainer):
    return {k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.policy).state_dict().items()}


@pytest.mark.parametrize("estimator, window", [("gae", None), ("grpo", None), ("gae", 0), ("gigpo", 0)])
def test_env_run_resumes_bit_for_bit_and_logs_episodes(tmp_path, lake_tokenizer, estimator, window):
    """A kill mid-run, then resume: the weights and metrics of the straight run, bit for bit (whole dialogues, and
    one row per turn with history_turns 0); completions.jsonl holds one line per episode either way."""
    import json

    kw = {"history_turns": window}
    straight = env_trainer(
        env_config(tmp_path / "straight", estimator, log_completions=True, **kw), lake_tokenizer
    )
    history = straight.train()
    cut = env_trainer(env_config(tmp_path / "cut", estimator, save_steps=1, **kw), lake_tokenizer)
    generate = cut.source.generate

    def crash_in_step_3(*args, **kwargs):  # a kill in the middle of the third step's episodes
        if cut.step == 2:
            raise KeyboardInterrupt
        return generate(*args, **kwargs)

    cut.source.generate = crash_in_step_3
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    resumed = env_trainer(
        env_config(tmp_path / "cut", estimator, resume_from_checkpoint="latest", **kw), lake_tokenizer
    )
    resumed_history = resumed.train()
    for name, value in final_weights(straight).items():
        assert torch.equal(value, final_weights(resumed)[name]), name
    drop = ("time/", "tokens_per_s")
    clean = lambda row: {k: v for k, v in row.items() if not k.startswith(drop)}  # noqa: E731
    assert clean(resumed_history[-1]) == clean(history[-1])
    row = history[-1]
    assert {
        "episode_return",
        "episode_turns",
        "success_rate",
        "invalid_action_fraction",
        "tokens_per_turn",
    } <= set(row)
    assert 1 <= row["episode_turns"] <= 3 and row["completion_length"] <= 3 * 4  # action tokens only
    lines = [json.loads(x) for x in (tmp_path / "straight" / "completions.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * 2 * (1 if estimator == "gae" else 2)
    first = lines[0]
    assert first["prompt"] in range(8) and 1 <= len(first["turns"]) <= 3
    assert first["return"] == pytest.approx(sum(t["reward"] for t in first["turns"]))
    assert first["reward"] == pytest.approx(first["return"])


def test_the_update_reads_each_reply_in_its_dialogue(tmp_path, lake_tokenizer):
    """The update's forward passes attend to the whole dialogue (observations included), not only to the action
    tokens: in fp32 the first (and only) minibatch's log-probs equal the sampler's (its old log-probs here), so
    the ratio is 1 on every action token. Attending to the action mask instead gives each reply a context without
    the observations it answered (approx_kl 8e-3 on this tiny model)."""
    trainer = env_trainer(env_config(tmp_path / "r", "gae", max_steps=1, num_ppo_epochs=1), lake_tokenizer)
    row = trainer.train()[-1]
    assert row["approx_kl"] < 1e-9 and row["clip_fraction"] == 0.0


def test_env_evaluation_on_held_out_seeds(tmp_path, lake_tokenizer):
    trainer = env_trainer(env_config(tmp_path / "e", "grpo", eval_steps=1, max_steps=1), lake_tokenizer)
    row = trainer.train()[-1]
    assert set(trainer.source.eval_metric_names) <= set(row)
    # a random tiny model never reaches the goal; its replies are mostly unreadable
    assert row["eval/success_rate"] == 0.0 and row["eval/invalid_action_fraction"] > 0.5
    assert 1 <= row["eval/episode_turns"] <= 3


def test_eval_envs_from_their_own_factory(tmp_path, lake_tokenizer):
    """eval_env_factory: the held-out episodes play envs of their own (here: the start square), the training
    ones the env_factory's (exploring starts); without it, both are the train envs."""
    from functools import partial

    resets = []

    class Counted(gym.Wrapper):
        def reset(self, **kwargs):
            resets.append(kwargs["seed"])
            return self.env.reset(**kwargs)

    args = env_config(tmp_path / "e", "gae", max_steps=1)
    trainer = PPOTrainer(
        build_causal_lm(lake_tokenizer, seed=0, n_positions=1024), None, args, processing_class=lake_tokenizer,
        env_factory=partial(make_frozenlake, random_start=True), train_seeds=range(8), eval_seeds=[100, 101],
        eval_env_factory=lambda: Counted(make_frozenlake()),
    )  # fmt: skip
    source = trainer.source
    assert (
        all(isinstance(e, Counted) for e in source.eval_envs)
        and len(source.eval_envs) == args.eval_batch_size
    )
    assert not any(isinstance(e, Counted) for e in source.envs)
    trainer.evaluate()
    assert sorted(resets) == [100, 101]
    trainer.train()  # training resets only the train envs
    assert sorted(resets) == [100, 101]
    plain = env_trainer(env_config(tmp_path / "f", "gae"), lake_tokenizer).source
    assert plain.eval_envs is plain.envs


class Countdown(gym.Env):
    """A text env that ends after seed % 3 + 1 turns (episodes of one batch end at different turns)."""

    observation_space = gym.spaces.Text(200)
    action_space = gym.spaces.Text(200)

    def reset(self, *, seed=None, options=None):
        self.left = seed % 3 + 1
        return f"{self.left} turns left", {"system_prompt": "count down"}

    def step(self, action):
        self.left -= 1
        return f"{self.left} turns left", float(len(action) % 3), self.left == 0, False, {}


class EosBias(torch.nn.Module):
    """The tiny policy with its EOS logit raised, so replies end at different lengths."""

    def __init__(self, model, eos):
        super().__init__()
        self.model, self.config, self.eos = model, model.config, eos

    def forward(self, **kw):
        out = self.model(**kw)
        out.logits[..., self.eos] += 4.0
        return out


def test_the_kv_cache_over_turns_gives_the_samples_of_re_reading_each_dialogue(lake_tokenizer, monkeypatch):
    """Episodes of different lengths, replies that end early: sampling through one KV cache over the turns draws
    the same tokens as re-reading every dialogue each turn, and its log-probs equal a full forward pass."""
    import rlhf.episodes as episodes_module
    from rlhf.rollout import Generator, forward_logprobs

    tok = lake_tokenizer
    policy = EosBias(build_causal_lm(tok, seed=0, n_positions=1024), tok.eos_token_id)
    gen = Generator(5, 1.0, tok.eos_token_id, tok.pad_token_id)
    gen.sync_weights(policy)
    seeds = [0, 1, 2, 3, 4, 4]

    def play():
        torch.manual_seed(11)
        return run_episodes(gen, tok, [Countdown() for _ in seeds], seeds, max_turns=4, max_length=1024)

    cached = play()
    monkeypatch.setattr(episodes_module, "_dialogue_cache", lambda generator, pad: None)
    reread = play()
    s = cached.samples
    assert torch.equal(s.response_ids, reread.samples.response_ids) and torch.equal(
        s.action_mask, reread.samples.action_mask
    )
    torch.testing.assert_close(s.sampled_logprobs, reread.samples.sampled_logprobs, atol=1e-5, rtol=0)
    turns = [len(d["turns"]) for d in cached.dialogues]
    assert turns == [1, 2, 3, 1, 2, 2]  # episodes left the batch at different turns
    lengths = [len(t["reply"]) for d in cached.dialogues for t in d["turns"]]
    assert len(set(lengths)) > 1  # replies of different lengths (some ended early)
    with torch.no_grad():
        full = forward_logprobs(policy, *s.inputs, 1.0, share_prompts=False)[0]
    torch.testing.assert_close(full * s.action_mask, s.sampled_logprobs, atol=1e-5, rtol=0)
    assert 0 < cached.stats["prefill_avoided_fraction"] < 1


# --- a history window: one row per turn ---------------------------------------------------------------------


@pytest.mark.parametrize("history", [0, 1])
def test_a_history_window_samples_each_turn_from_its_window_as_ids(lake_tokenizer, history):
    """history_turns=k: each reply is sampled from the system prompt and the observation k turns back, then the
    later replies and observations as the same ids as in the whole dialogue; the Samples hold max_turns rows per
    episode (turn t of episode e at row e * max_turns + t), padding rows train nothing, and folding the rows puts
    each episode's replies, turn ends and rewards back in order."""
    tok = lake_tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    word = lambda w: tok(w, add_special_tokens=False)["input_ids"] + [eos]  # noqa: E731
    # episode 0: right, then down into the hole (2 turns); episode 1: up into the edge three times
    replies = [word("right"), word("up"), word("down"), word("up"), word("up")]
    gen = Scripted(replies, eos, pad, max_new_tokens=6)
    envs = [make_frozenlake(), make_frozenlake()]
    batch = run_episodes(gen, tok, envs, [0, 1], max_turns=3, max_length=4096, history_turns=history)
    fmt, s = ChatFormat(tok), batch.samples
    start, info = envs[0].reset(seed=0)
    system = info["system_prompt"]
    obs = [[t["observation"] for t in d["turns"]] for d in batch.dialogues]
    queries = [q[m.bool()].tolist() for call in gen.calls for q, m in zip(*call)]
    assert len(queries) == 5 and queries[0] == queries[1] == fmt.prompt_ids(system, start)  # turn 1
    if history == 0:  # turn 3 of episode 1: the system prompt and the observation after turn 2, nothing else
        assert queries[4] == fmt.prompt_ids(system, obs[1][1])
    else:  # the observation after turn 1, then reply 2 and the observation after it, as ids
        assert queries[4] == fmt.prompt_ids(system, obs[1][0]) + replies[3] + fmt.observation_ids(
            system, obs[1][1], True
        )
    assert len(s) == 2 * 3 and s.query_ids.shape[0] == 6
    sizes = [len(replies[i]) for i in (0, 2)] + [0] + [len(replies[i]) for i in (1, 3, 4)]
    assert s.action_mask.sum(1).tolist() == sizes  # row 2: episode 0's unplayed third turn
    acts = s.action_mask[1].bool()
    assert s.response_ids[1][acts].tolist() == replies[2] and (s.sampled_logprobs[1][acts] == -0.5).all()
    # every row's prompt is the ids all queries start with; the rest of its query opens its response
    assert (s.query_ids == s.query_ids[0]).all() and s.query_mask.all()
    head = s.response_ids[5][s.response_mask[5].bool() & ~s.action_mask[5].bool()].tolist()
    assert s.query_ids[0].tolist() + head == queries[4]  # episode 1, turn 3: row 1 * 3 + 2
    folded = fold_turns(s.action_mask, 3)
    assert folded.shape == (2, 3 * s.action_mask.shape[1]) and folded.sum(1).tolist() == [
        sum(sizes[:3]),
        sum(sizes[3:]),
    ]
    for e in range(2):
        ends = fold_turns(s.turn_ends, 3)[e].bool()
        rewards = fold_turns(s.env_rewards, 3)[e][ends]
        assert rewards.tolist() == [t["reward"] for t in batch.dialogues[e]["turns"]]
        seen = [start] + [t["observation"] for t in batch.dialogues[e]["turns"][:-1]]
        assert fold_turns(s.turn_states, 3)[e][ends].tolist() == [state_id(o) for o in seen]
    assert len({state_id(o) for o in [start] + obs[1][:2]}) == 1  # up into the edge: the same square, one id
    assert batch.dialogues[0]["turns"][-1]["observation"].count("hole")
    assert batch.completions[0].startswith("right")  # per episode, not per row


def test_a_window_over_the_whole_dialogue_trains_like_the_dialogue(tmp_path, lake_tokenizer, monkeypatch):
    """history_turns >= max_turns: each turn's row holds its whole dialogue so far, which is what one row per
    episode holds up to that reply: the same samples (both sampled by re-reading, same seed), and after a PPO step
    (gae with a critic, fp32) the same weights to float rounding. The rows differ only in layout. (One step: the
    update's shuffle of 6 rows and of 2 draws different amounts of randomness, so later samples differ.)"""
    import rlhf.episodes

    monkeypatch.setattr(rlhf.episodes, "_dialogue_cache", lambda *a: None)
    runs = {}
    for name, history in (("dialogue", None), ("window", 3)):
        args = env_config(tmp_path / name, "gae", max_steps=1, history_turns=history)
        trainer = env_trainer(args, lake_tokenizer)
        runs[name] = (trainer.train(), final_weights(trainer))
    (h1, w1), (h2, w2) = runs["dialogue"], runs["window"]
    for key in ("episode_return", "episode_turns", "completion_length", "explained_variance", "policy_loss"):
        assert h2[-1][key] == pytest.approx(h1[-1][key], abs=1e-6), key
    for name, value in w1.items():
        assert torch.allclose(value, w2[name], atol=1e-6), name
    start = build_causal_lm(lake_tokenizer, seed=0, n_positions=1024).state_dict()
    assert max((w1[k] - start[k]).abs().max().item() for k in w1) > 1e-4  # the steps moved the weights


def test_gigpo_needs_env_episodes(tmp_path, lake_tokenizer):
    """Its step groups are replies to the same observation: a prompt dataset is a one-line error."""
    from rlhf.prompts import prepare_prompts

    args = env_config(tmp_path, "gigpo")
    with pytest.raises(ValueError, match=r"^advantage_estimator='gigpo' needs env episodes"):
        prepare_prompts(None, None, lake_tokenizer, args, 1, None)
