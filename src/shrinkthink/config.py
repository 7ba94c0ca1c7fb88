"""The run configuration: YAML validated into typed models, `key=value` overrides, and one-line
errors that name the field. Field descriptions are the documentation: `shrinkthink config` prints
every field (docs/config.md is the same in Markdown).

    shrinkthink run stages.explore.steps=50 model.depth=2   # the quickstart (src/shrinkthink/configs/quickstart.yaml)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shrinkthink.errors import UserError

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "quickstart.yaml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(Strict):
    """Low-rank adapters (Hu et al. 2021, LoRA) through `peft`: the base weights stay frozen and
    only the adapters train. Checkpoints hold the base weights and the adapter in `adapter/`."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: float = Field(32.0, gt=0, description="the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1, description="names of the linear layers that get adapters (Llama-family names by default)")


class ModelConfig(Strict):
    kind: Literal["tiny", "pretrained"] = Field(
        "tiny", description="tiny: built from scratch (its tokenizer: `tokenizer`); pretrained: a local folder, "
        "a .gguf file, 'smollm2' or a Hugging Face hub id (`path`)")
    depth: int = Field(4, ge=1, le=32, description="tiny only: the one size dial (layers; width 32*depth)")
    tokenizer: Literal["char", "bpe"] = Field(
        "char", description="tiny only: char: one token per printable ASCII character; bpe: byte-pair merges trained "
        "on the task's training prompts and demonstrations when the model is built (a frequent word becomes one "
        "token; digits and punctuation stay one character a token), saved with every checkpoint")
    vocab_size: int = Field(4096, ge=128, le=65536, description="tiny bpe only: the most tokens the merges may reach")
    path: str | None = Field(
        None, description="pretrained only: a local folder, a .gguf file, 'smollm2', or a Hugging Face hub id "
        "('org/name') found the way transformers finds it: the local cache (HF_HUB_CACHE) first, downloaded only "
        "where the environment allows it (never with HF_HUB_OFFLINE=1)")
    dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "auto", description="the weights' dtype (transformers' torch_dtype, passed to from_pretrained). auto: "
        "bfloat16 on CUDA when the base weights are frozen (lora), float32 otherwise (Adam's small steps vanish "
        "in bfloat16 weights); not transformers' 'auto', which keeps the checkpoint's own dtype")
    attn_implementation: str | None = Field(
        None, description="transformers' attention kernel: eager, sdpa, flash_attention_2 (needs flash-attn, "
        "CUDA and bfloat16), ...; None: transformers' default. Training and evaluation forwards use it; sampling "
        "a Llama-family model runs shrinkthink's own decoder, which calls scaled_dot_product_attention")
    gradient_checkpointing: bool = Field(
        False, description="recompute each layer's activations in the backward pass instead of keeping them "
        "(transformers' activation checkpointing): less memory for a larger model, about a third more compute "
        "a training step. transformers applies it to training-mode forwards only")
    lora: LoraConfig | None = Field(None, description="train low-rank adapters instead of every weight (needs peft)")

    @model_validator(mode="after")
    def _pretrained_fields(self):
        if self.kind == "pretrained" and not self.path:
            raise ValueError("model.path is required when model.kind is 'pretrained'")
        if self.kind == "pretrained" and self.tokenizer != "char":
            raise ValueError("model.tokenizer: a pretrained model brings its own tokenizer; 'bpe' is for kind 'tiny'")
        return self


class TransferTask(Strict):
    """A task the run never trains on, evaluated beside the trained one."""

    name: str = Field(..., description="a task name, as `task.name` takes it (e.g. 'gym:letter_counting')")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword options of the task")
    levels: list[int] = Field(default_factory=lambda: [1], min_length=1, description="levels evaluated")
    problems: int = Field(200, ge=1, description="test problems per level")


class TaskConfig(Strict):
    """The task: its problems, their levels, and the verifier that scores an answer."""

    name: str = Field(
        "arith", description="a built-in task, 'gym:<dataset>', 'gym-mix', 'jsonl', 'datasets' (a file or dataset "
        "`datasets` reads, with a column mapping), or 'package.module:Class'; see `shrinkthink tasks`")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword options of the task")
    eval_levels: list[int] = Field(
        default_factory=lambda: [1, 2, 3, 4], description="levels reported after every stage")
    eval_problems: int = Field(100, ge=1, description="held-out problems per level for stage-end evaluation")
    eval_start: bool | None = Field(
        None, description="evaluate the model before the first stage too (the summary's `start` entry, the table's "
        "first row); default: when the first stage is not a warm start, as for a pretrained model")
    transfer: list[TransferTask] = Field(
        default_factory=list, description="tasks never trained on, evaluated on their test problems at the start and "
        "after every stage: whether a stage kept the skill beyond its training mix")


class Sampling(Strict):
    """How an RL stage samples its completions."""

    max_new_tokens: int = Field(64, ge=1, description="completion length cap, in tokens")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the samples (1: the policy's own "
                                                        "distribution)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: draw from the most likely tokens whose "
                                                      "probabilities add up to top_p (1: from all)")
    dtype: Literal["model", "bfloat16", "auto"] = Field(
        "model", description="the sampler's matmul precision: the policy's own, or bfloat16 copies of its weights "
        "(faster on GPUs and on CPUs with AMX, much slower on CPUs without bfloat16 units; auto: bfloat16 where the "
        "device has such units, read from the CPU's flags); the learner then "
        "recomputes the old log-probabilities in its own precision before the update, so the ratio starts at 1")


class LearnerConfig(Strict):
    """The RL update of an explore or shrink stage (learners/)."""

    name: Literal["grpo", "rloo", "expert_iteration"] = Field(
        "grpo", description="grpo: group-normalised advantages, clipped ratio; rloo: leave-one-out baseline; "
        "expert_iteration: keep verified winners and fine-tune (STaR / ReST-EM)")
    lr: float = Field(
        2e-4, gt=0, description="keep it at or below where the warm "
        "start ended: Adam's first steps move every weight by about lr")
    warmup_steps: int = Field(
        10, ge=0, description="updates over which the learning rate ramps up from lr/warmup_steps")
    group_size: int = Field(16, ge=2, description="G: samples per problem")
    problems_per_step: int = Field(8, ge=1, description="problems drawn for each step, group_size samples each")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="grpo: what centred rewards are divided by. group: each group's std (GRPO); batch: the "
        "std of the whole batch's rewards (TRL's scale_rewards='batch', DLER); none: nothing (Dr. GRPO). A weighted "
        "shaping term (length_penalty, group_length, shortest_correct) needs batch or none: per-group "
        "scaling turns its weight, however tiny, into an order-one advantage inside an all-correct group")
    clip_low: float = Field(0.2, ge=0, le=1, description="PPO clipping: the ratio's lower bound is 1 - clip_low")
    clip_high: float = Field(0.28, ge=0, description="DAPO clip-higher")
    inner_epochs: int = Field(
        1, ge=1, description="passes over each rollout batch (ratio departs from 1 after the first)")
    loss_aggregation: Literal["token", "sequence", "constant"] = Field(
        "token", description="grpo, rloo: how token losses make a minibatch's loss. token: their mean over all "
        "tokens (DAPO); sequence: each completion's mean, then the mean over completions (GRPO); constant: their sum "
        "over (completions x sampling.max_new_tokens), so a length does not rescale its own gradient (Dr. GRPO, "
        "with scale_rewards none)")
    minibatches: int = Field(1, ge=1, description="optimizer steps each rollout batch is split into, per inner "
                                                  "epoch")
    kl_coef: float = Field(
        0.0, ge=0, description="KL to the frozen stage-start policy (k3 estimator); 0 keeps no reference model")
    entropy_coef: float = Field(
        0.0, ge=0, description="grpo, rloo: entropy bonus per token of the trained episodes (keeps a policy from "
        "collapsing to one answer a problem; 0: none)")
    max_grad_norm: float = Field(1.0, gt=0, description="gradients are clipped to this global L2 norm before "
                                                         "each optimizer step")
    winner_threshold: float = Field(1.0, description="expert_iteration: the correctness (times the gates, before "
                                                      "additive terms) a winner needs")
    dtype: Literal["model", "bfloat16", "auto"] = Field(
        "model", description="the precision of the update's forward and backward: the policy's own, or bfloat16 "
        "autocast (mixed precision: weights, gradients and Adam state stay float32; faster on GPUs and on CPUs with "
        "AMX, slower on CPUs without bfloat16 units; auto: bfloat16 where the device has such units)")


# --- criteria: the reward terms of the shrink stage (criteria.py) ---------------------------
class LengthPenaltyCriterion(Strict):
    name: Literal["length_penalty"] = Field(description="additive: -lambda * reasoning tokens / reference tokens on "
                                                        "correct transcripts, lambda ramped up while accuracy holds")
    start: float = Field(0.01, gt=0, description="lambda at the start: tiny, so the first rounds cost no accuracy "
                                               "(above 0: the ramp multiplies it)")
    factor: float = Field(2.0, ge=1, description="lambda is multiplied by this each round while accuracy holds")
    backoff: float = Field(0.5, gt=0, le=1, description="and by this when accuracy falls below the tolerance")
    max_value: float = Field(2.0, gt=0, description="lambda never exceeds this")


class TokenBudgetCriterion(Strict):
    name: Literal["token_budget"] = Field(description="gate: a transcript whose reasoning is longer than the budget "
                                                      "scores 0; the budget shrinks while accuracy holds (ThinkPrune)")
    start_tokens: float | None = Field(
        None, gt=0, description="the first budget (default: "
        "start_percentile of the first batch's correct reasoning lengths)")
    start_percentile: float = Field(
        95.0, gt=0, le=100, description="without start_tokens, the budget starts at this percentile of the first "
        "batch's correct reasoning lengths, above nearly every transcript")
    factor: float = Field(
        0.8, gt=0, le=1, description="the budget is multiplied by this each round while accuracy holds")
    backoff: float = Field(1.25, ge=1, description="and by this when accuracy falls below the tolerance")
    min_tokens: float = Field(0.0, ge=0, description="the budget never shrinks below this")


class GroupLengthCriterion(Strict):
    name: Literal["group_length"] = Field(description="additive: Kimi k1.5's length reward, within each group, on "
                                                      "correct transcripts")
    weight: float = Field(0.5, ge=0, description="Kimi k1.5 length reward scale")


class ShortestCorrectCriterion(Strict):
    name: Literal["shortest_correct"] = Field(description="additive: ShorterBetter's penalty for distance to the "
                                                          "group's shortest correct transcript, on correct ones")
    weight: float = Field(
        0.5, ge=0, description="ShorterBetter: penalty per reference "
        "length of distance to the group's shortest correct transcript")


class OverlongCriterion(Strict):
    name: Literal["overlong"] = Field(description="additive: DAPO's soft punishment of completions near or past "
                                                  "max_tokens")
    max_tokens: int = Field(
        ..., ge=1, description="DAPO soft overlong punishment: -1 at and beyond this completion length")
    cache_tokens: int = Field(16, ge=0, description="the linear ramp to -1 starts this many tokens before max_tokens")


class StepValidityCriterion(Strict):
    name: Literal["step_validity"] = Field(description="gate: correctness counts only when the task's step checker "
                                                       "accepts every reasoning line")
    graded: bool = Field(
        False, description="correctness counts in proportion to the "
        "share of valid lines, instead of only when all are valid")


class FormatCriterion(Strict):
    name: Literal["format"] = Field(description="gate: the completion is reasoning lines, one answer line, then "
                                                "nothing")
    line_pattern: str | None = Field(
        None, description="regular expression every reasoning line must match (default: any)")


class LeanCriterion(Strict):
    name: Literal["lean"] = Field(description="gate: the reasoning is a Lean 4 proof of the problem's statement that "
                                              "Lean accepts")
    executable: str = Field("lean", description="the Lean 4 executable (must be on the PATH)")
    backend: Literal["cli", "lean-interact"] = Field(
        "cli", description="cli: run `lean` on a file; lean-interact: keep a Lean REPL alive")
    project: str | None = Field(None, description="lean-interact: a local Lean project (e.g. with Mathlib)")
    header: str = Field("", description="Lean code put before every proof (imports, opens)")
    timeout_s: float = Field(60.0, gt=0, description="seconds Lean may take over one proof")


class RewardRamp(Strict):
    """A user reward's weight under a controller, as the length penalty's lambda: it starts at the
    criterion's `weight` and moves at every evaluation of a shrink stage."""

    factor: float = Field(2.0, gt=0, description="the weight is multiplied by this each round while accuracy holds")
    backoff: float = Field(0.5, gt=0, description="and by this when accuracy falls below the tolerance")
    max_value: float | None = Field(None, gt=0, description="the weight never exceeds this (default: no bound)")


class RewardCriterion(Strict):
    """A user's reward: a plain callable `fn(completions, problems, **kwargs)` returning one float
    per completion, or None to skip one (criteria.py `UserReward` documents the call)."""

    name: Literal["reward"] = Field(description="additive or gate: a user's own reward function, over a batch of "
                                                "completions with their problems")
    function: str = Field(..., description="'package.module:function', or a key of the rewards passed to "
                                           "shrinkthink.run")
    label: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                              description="its component's name, logged as reward_<label> (default: the function's "
                                          "name); two user rewards need two labels")
    weight: float = Field(1.0, description="additive: the reward adds weight * value (with a ramp: the weight's start)")
    gate: bool = Field(False, description="multiply correctness by the value (in 0..1) instead of adding it")
    ramp: RewardRamp | None = Field(None, description="ramp the weight while accuracy holds (shrink stages)")

    @model_validator(mode="after")
    def _gate_has_no_weight(self):
        if self.gate and (self.weight != 1.0 or self.ramp is not None):
            raise ValueError("weight, ramp: a gate multiplies correctness by the function's value; they are for "
                             "additive rewards (gate: false)")
        if self.ramp is not None and self.weight <= 0:
            raise ValueError(f"weight: a ramp multiplies the weight, so it must start above 0, got {self.weight}")
        return self


Criterion = Annotated[
    LengthPenaltyCriterion | TokenBudgetCriterion | GroupLengthCriterion | ShortestCorrectCriterion
    | OverlongCriterion | StepValidityCriterion | FormatCriterion | LeanCriterion | RewardCriterion,
    Field(discriminator="name"),
]


# --- editors: rewrite winners into training targets (editors/) -------------------------------
class AblationCriticEditor(Strict):
    name: Literal["ablation_critic"] = Field(description="delete reasoning lines; keep a deletion when the answer "
                                                         "still verifies")
    spans: bool = Field(
        True, description="regenerate mode: also try deleting the derivation before a step's result (a+b=c -> c)")
    max_checks: int = Field(64, ge=1, description="at most this many verification rollouts per transcript")
    mode: Literal["regenerate", "keep_rest"] = Field(
        "regenerate", description="regenerate: delete a line and what follows, the policy "
        "writes the rest again (a habit comes back); keep_rest: delete the line alone, last "
        "line first, kept when the answer still verifies and the next line stays as likely")
    max_surprise: float = Field(
        1.0, ge=0, description="keep_rest: how much less likely (nats "
        "a token) the next line may become without the deleted one")


class LLMCriticEditor(Strict):
    name: Literal["llm_critic"] = Field(description="a model names the steps that can go; keep the deletion when the "
                                                    "answer still verifies")
    model: str = Field("policy", description="the critic: 'policy', a local folder, a .gguf file or 'smollm2'")
    max_new_tokens: int = Field(32, ge=1, description="length cap of the critic's reply, in tokens")


class ParaphraseEditor(Strict):
    name: Literal["paraphrase"] = Field(description="rewrite the reasoning in other words (re-verified); with "
                                                    "probe_problems, the steganography probe")
    model: str = Field(
        "rules", description="'rules' (the task's rule-based rewriter), a local folder, a .gguf file or 'smollm2'")
    max_new_tokens: int = Field(128, ge=1, description="length cap of a model's paraphrase, in tokens "
                                                       "(not used by 'rules')")
    seed: int = Field(0, description="seed of the rule-based rewriter's choices ('rules')")


Editor = Annotated[AblationCriticEditor | LLMCriticEditor | ParaphraseEditor, Field(discriminator="name")]


class Gate(Strict):
    """When a stage ends before its step budget."""

    accuracy: float | None = Field(
        None, ge=0, le=1, description="leave the stage once held-out greedy accuracy reaches this")
    patience: int | None = Field(
        None, ge=1, description="early stopping: also leave once held-out accuracy has gone this many evaluations in "
        "a row without beating its best by more than min_delta (explore: counted at max_level; latent: in the last "
        "curriculum phase; not for shrink, which trades accuracy for tokens). Off: null")
    min_delta: float = Field(
        0.0, ge=0, le=1, description="patience: the gain over the best accuracy that counts as progress")


class StageBase(Strict):
    """The fields every stage has."""

    name: str = Field(..., description="unique stage name; checkpoints and summary use it")
    steps: int = Field(..., ge=0, description="step budget")
    gate: Gate = Field(default_factory=Gate, description="when to leave the stage before its step budget")
    eval_every: int = Field(50, ge=1, description="steps between held-out evaluations")
    eval_problems: int = Field(64, ge=1, description="held-out problems per level at each evaluation")
    checkpoint_every: int = Field(100, ge=1, description="steps between resumable checkpoints")


# additive terms whose weight is a dial (overlong's -1 for a cut-off transcript is not); a user's
# reward is one unless it is a gate
WEIGHTED = ("length_penalty", "group_length", "shortest_correct", "reward")


def check_criteria(criteria: list, sampling: Sampling, learner: LearnerConfig) -> None:
    """Combinations of reward terms that cannot work, named by field."""
    weighted = [f"criteria.{i} ({c.name})" for i, c in enumerate(criteria)
                if c.name in WEIGHTED and not getattr(c, "gate", False)]
    if weighted and learner.name == "grpo" and learner.scale_rewards == "group":
        raise ValueError(f"learner.scale_rewards: 'group' rescales {weighted[0]} to an order-one advantage inside "
                         "every all-correct group, whatever its weight; set learner.scale_rewards to batch or none")
    for i, criterion in enumerate(criteria):
        if criterion.name == "overlong":
            if criterion.max_tokens > sampling.max_new_tokens:
                raise ValueError(f"criteria.{i}.max_tokens ({criterion.max_tokens}) is above sampling.max_new_tokens "
                                 f"({sampling.max_new_tokens}): no completion can reach it")
            if criterion.cache_tokens >= criterion.max_tokens:
                raise ValueError(f"criteria.{i}.cache_tokens ({criterion.cache_tokens}) must be below max_tokens "
                                 f"({criterion.max_tokens})")


class WarmStartStage(StageBase):
    """Supervised warm start on the task's demonstrations of the lowest levels. Loop: stages/warmstart.py."""

    kind: Literal["warmstart"] = Field(description="warmstart: fine-tune on the task's gold demonstrations, "
                                                   "digressions and all")
    levels: list[int] = Field(..., min_length=1, description="levels the demonstrations cover (the lowest ones)")
    digression_rate: float = Field(0.3, ge=0, le=1, description="chance of a digression after each gold step")
    recheck: float = Field(
        0.0, ge=0, le=1, description="share of demonstrations with the re-check habit: every gold step followed by "
        "`check <step>` (greedy decoding keeps a habit, where it skips chance digressions)")
    random_positions: float | None = Field(
        None, gt=0, description="randomised positions (Ruoss et al. 2023): each demonstration's tokens sit at sorted "
        "uniform draws on [0, span) instead of 0, 1, 2, ...; every later forward counts 0, 1, 2, ... So a model that "
        "saw only short demonstrations has already seen the distances a longer transcript brings. Set it to about the "
        "longest prompt plus completion the policy will decode; off: null")
    pool_problems: int = Field(
        4000, ge=1, description="training problems per level the demonstrations are drawn from; a model memorises a "
        "pool it sees many times over (ProsQA's made-up names want tens of thousands)")
    batch_size: int = Field(64, ge=1, description="demonstrations per update")
    lr: float = Field(3e-3, gt=0, description="peak learning rate: linear warm-up, then a cosine down to a tenth "
                                              "of it by the stage's last step")
    warmup_steps: int = Field(20, ge=0, description="updates over which the learning rate ramps up to lr")


class ExploreStage(StageBase):
    """Outcome-only RL that climbs the task's levels. Loop: stages/explore.py."""

    kind: Literal["explore"] = Field(description="explore: RL on correctness alone, raising the level as it "
                                                 "is mastered")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="the RL update")
    sampling: Sampling = Field(default_factory=Sampling, description="how completions are sampled")
    start_level: int = Field(1, ge=1, description="the level the climb starts at")
    max_level: int = Field(..., ge=1, description="the highest level of the climb, where gate and patience are "
                                                  "judged")
    promote_at: float = Field(
        0.8, ge=0, le=1, description="raise the level when held-out accuracy at the current one reaches this")
    replay: float = Field(
        0.25, ge=0, lt=1, description="share of each batch drawn from lower levels, so the climb does not erase them")
    lookahead: float = Field(
        0.0, ge=0, lt=1, description="share of each batch drawn from the level above the current one (up to "
        "max_level), so the next climb starts before the promotion")
    dynamic_sampling: bool = Field(
        False, description="DAPO: resample problems whose group scored all alike (no signal)")
    criteria: list[Criterion] = Field(
        default_factory=list, description="reward terms on top of correctness from the first step: the ablation the "
        "method warns against (leave empty; tighten in a shrink stage)")

    @model_validator(mode="after")
    def _levels(self):
        if self.max_level < self.start_level:
            raise ValueError(f"max_level ({self.max_level}) is below start_level ({self.start_level})")
        if self.replay + self.lookahead >= 1:
            raise ValueError(f"replay + lookahead ({self.replay} + {self.lookahead}) leaves no problems at the "
                             "current level")
        check_criteria(self.criteria, self.sampling, self.learner)
        return self


class LatentStage(StageBase):
    """Internalise the reasoning: COCONUT continuous thoughts replace reasoning steps one
    curriculum stage at a time, or iCoT removes leading reasoning tokens on a schedule, so the
    policy answers with less and less visible reasoning. Loop: stages/latent.py."""

    kind: Literal["latent"] = Field(
        description="latent: internalise the reasoning (method: coconut, icot, ccot or pause)")
    method: Literal["coconut", "icot", "ccot", "pause"] = Field(
        ..., description="coconut: continuous thoughts (arXiv 2412.06769); "
        "icot: stepwise removal of reasoning tokens (arXiv 2405.14838); "
        "ccot: compressed chain of thought, dense contemplation tokens trained to reproduce the hidden states of "
        "a subset of the reasoning's positions (arXiv 2412.13171); "
        "pause: coconut's curriculum with learned pause tokens, no hidden state fed back (the baseline)")
    levels: list[int] = Field(..., min_length=1, description="levels of the training problems")
    source: Literal["policy", "gold"] = Field(
        "policy", description="where the reasoning steps come from: policy: the current policy's own verified greedy "
        "transcripts (lines of its reasoning; the task's gold steps where it fails); gold: the task's gold steps")
    pool_problems: int = Field(1000, ge=1, description="training problems per level")
    batch_size: int = Field(32, ge=1, description="training sequences per update")
    lr: float = Field(1e-3, gt=0, description="constant after warm-up; the optimizer is reset at every curriculum "
                                              "step (icot: each token more removed) until the last")
    warmup_steps: int = Field(0, ge=0, description="updates over which lr ramps up after each optimizer reset")
    final_decay: bool = Field(
        False, description="in the last curriculum step (coconut: every step latent; icot: all reasoning removed), lr "
        "falls to 0 on a cosine by the stage's last step")
    max_new_tokens: int = Field(96, ge=1, description="completion cap for evaluation and answering")
    max_grad_norm: float = Field(1.0, gt=0, description="gradients are clipped to this global L2 norm before each "
                                                         "update")
    # COCONUT (paper names in brackets)
    thoughts_per_step: int = Field(1, ge=1, description="coconut: continuous thoughts per replaced step [c_thought]")
    steps_per_stage: int = Field(
        100, ge=1, description="coconut: training steps per curriculum stage [epochs_per_stage, in steps]")
    max_latent_stage: int = Field(
        3, ge=1, description="coconut: at most this many steps become thoughts "
        "one by one; the stage after replaces every step [max_latent_stage]")
    start_stage: int = Field(
        0, ge=0, description="coconut: curriculum stage to begin "
        "at (0: full reasoning between empty <bot><eot> markers)")
    earlier_stage_share: float = Field(
        0.0, ge=0, lt=1, description="coconut: share of examples built at an earlier stage, uniform over 0..current-1, "
        "so the model can still reason in language (ours; the paper mixes in every stage: uniform_prob)")
    uniform_prob: float = Field(
        0.0, ge=0, le=1, description="coconut: probability that an example is built at a stage drawn uniformly from "
        "0..its number of steps, later stages included [uniform_prob]; drawn before earlier_stage_share")
    marker_init: str = Field(
        " ", description="coconut, ccot: text whose first token's embedding the new <bot>, <eot>, <thought> start "
        "from ('' for the mean embedding, which disrupts a small model)")
    thought_scale: Literal["hidden", "embedding"] = Field(
        "hidden", description="coconut: hidden: feed the last hidden state back as "
        "it is (the paper); embedding: rescale it to the mean input-embedding norm "
        "(a small model's final-norm output is far longer than its embeddings)")
    thought_targets: bool = Field(
        False, description="coconut: also train each continuous thought to predict one "
        "of the last c tokens of the step it replaces (on arith, its running value), "
        "so the thoughts learn what to carry; the paper leaves them unsupervised")
    # iCoT
    remove_tokens: int = Field(8, ge=1, description="icot: reasoning tokens removed per remove_every_steps steps, "
                                                     "a token at a time [remove_per_epoch]")
    remove_every_steps: int = Field(100, ge=1, description="icot: training steps over which remove_tokens more "
                                                           "tokens go (our epoch)")
    remove_start: int = Field(0, ge=0, description="icot: tokens removed from the start [remove_start_from]")
    smoothing_lambda: float | None = Field(
        4.0, gt=0, description="icot: removal smoothing, P(offset o) "
        "∝ exp(-λ o); null turns it off [removal_smoothing_lambda]")
    max_offset: int = Field(8, ge=0, description="icot: largest smoothing offset drawn")
    drop_all_after: int | None = Field(
        None, ge=0, description="icot: once the scheduled removal reaches this "
        "many tokens, remove all reasoning [remove_all_when_remove_beyond]")
    # CCoT
    compression_ratio: float = Field(
        0.25, gt=0, le=1, description="ccot: contemplation tokens per reasoning token, k = ceil(r m) for m reasoning "
        "tokens [r; the paper's 0.05 and 0.10 are of LLaMA's subword tokens, a character carries less]")
    autoregressive_layer: int | None = Field(
        None, ge=1, description="ccot: the layer l whose output states are the targets and are fed back as the next "
        "contemplation input (1: the first decoder layer's output, the model's depth: its final-norm output) "
        "[l; the paper's 15 of LLaMA2-7B's 32]; null: half the model's layers")
    stop_rule: Literal["end", "mean"] = Field(
        "end", description="ccot: how many contemplation tokens an answer gets; end: until the END classifier (the "
        "probability of <eot> next) exceeds end_threshold, at most the pool's largest k [END_psi]; mean: the pool's "
        "mean k for every answer")
    end_threshold: float = Field(
        0.5, gt=0, lt=1, description="ccot: stop_rule end stops after the first contemplation token at which the "
        "probability of <eot> next exceeds this")

    @model_validator(mode="after")
    def _method_fields(self):
        coconut_only = {"thoughts_per_step", "steps_per_stage", "max_latent_stage", "start_stage",
                        "earlier_stage_share", "uniform_prob", "marker_init", "thought_scale", "thought_targets"}
        icot_only = {"remove_tokens", "remove_every_steps", "remove_start", "smoothing_lambda", "max_offset",
                     "drop_all_after"}
        ccot_only = {"compression_ratio", "autoregressive_layer", "stop_rule", "end_threshold"}
        own = {"coconut": coconut_only, "pause": coconut_only, "icot": icot_only,
               "ccot": ccot_only | {"marker_init"}}[self.method]
        # a dumped config (a run's config.yaml, `shrinkthink config --defaults`) sets every field to
        # its default: only a value another method would read is a mistake
        foreign = {name for name in ((coconut_only | icot_only | ccot_only) - own) & self.model_fields_set
                   if getattr(self, name) != type(self).model_fields[name].default}
        if foreign:
            raise ValueError(f"{', '.join(sorted(foreign))}: not a field of method '{self.method}'")
        if self.method in ("coconut", "pause") and self.start_stage > self.max_latent_stage + 1:
            raise ValueError(f"start_stage ({self.start_stage}) is past the last stage "
                             f"(max_latent_stage + 1 = {self.max_latent_stage + 1})")
        if self.method in ("coconut", "pause") and self.final_decay:
            last = (self.max_latent_stage + 1 - self.start_stage) * self.steps_per_stage
            if last >= self.steps:
                raise ValueError(f"final_decay: the last curriculum stage would begin at step {last}, "
                                 f"past the stage's {self.steps} steps, so nothing would decay")
        return self


class ShrinkStage(StageBase):
    """Tighten the criteria once the model can solve: RL under the criteria, fine-tuning on edited
    winners, or both, with the criteria's controllers stepping at every evaluation. Loop:
    stages/shrink.py."""

    kind: Literal["shrink"] = Field(description="shrink: tighten the criteria now that the model can solve")
    levels: list[int] | None = Field(
        None, min_length=1, description="levels problems are drawn from (default: task.eval_levels)")
    criteria: list[Criterion] = Field(default_factory=list, description="reward terms on top of correctness")
    editors: list[Editor] = Field(
        default_factory=list, description="rewrite this step's winners; fine-tune on the re-verified edits")
    rl: bool = Field(True, description="update the policy by RL under the criteria every step")
    finetune_every: int = Field(
        1, ge=1, description="steps between fine-tuning steps on edited winners (when editors are set)")
    finetune_lr: float = Field(1e-4, gt=0, description="learning rate of the fine-tuning on edited winners")
    finetune_batches: int = Field(1, ge=1, description="fine-tuning steps on each set of edits")
    tolerance: float = Field(
        0.01, ge=0, le=1, description="the drop in validation accuracy below the stage's start that is accepted; "
        "controllers back off (and restore_best and the gate count an evaluation as not held) only when the drop "
        "exceeds it by more than noise_z standard errors")
    noise_z: float = Field(
        2.0, ge=0, description="how many standard errors of the paired difference (the same validation problems at "
        "the stage's start and now) a drop must exceed the tolerance by to count, so that a dip the size of the "
        "evaluation's noise does not back a controller off; 0: any drop past the tolerance counts")
    reladder: bool = Field(
        False, description="start at the lowest level and climb back, gated by promote_at, with the criteria on")
    promote_at: float = Field(
        0.8, ge=0, le=1, description="reladder: raise the level when held-out accuracy at the current one reaches this")
    replay: float = Field(0.25, ge=0, lt=1, description="reladder: share of each batch from lower levels")
    restore_best: bool = Field(
        True, description="end with the evaluated policy with the fewest reasoning tokens whose accuracy held within "
        "the tolerance; among those within 2% of the fewest, the most accurate")
    probe_problems: int = Field(
        32, ge=0, description="held-out transcripts for the steganography "
        "probe at each evaluation (with a paraphrase editor)")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="the RL update (rl: true)")
    sampling: Sampling = Field(default_factory=Sampling, description="how completions are sampled")

    @model_validator(mode="after")
    def _combinations(self):
        if self.gate.patience is not None:
            raise ValueError("gate.patience: a shrink stage trades accuracy for tokens, so a stall in accuracy "
                             "is not convergence; it ends on its step budget or gate.accuracy")
        check_criteria(self.criteria, self.sampling, self.learner)
        return self


Stage = Annotated[WarmStartStage | ExploreStage | ShrinkStage | LatentStage, Field(discriminator="kind")]


class RunConfig(Strict):
    """A run: the model, the task, and the curriculum of stages it goes through."""

    name: str = Field("run", description="run name; the run directory defaults to runs/<name>")
    seed: int = Field(0, description="seed of the model's initialisation, the problem pools and the sampling")
    run_dir: str | None = Field(None, description="where outputs go (default runs/<name>)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when it is available, else "
                                                                      "the CPU")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: all cores, shared out "
                                                          "between the ranks)")
    procs: int = Field(1, ge=1, description="data-parallel ranks `shrinkthink run` starts on this machine (`--procs` "
                                            "overrides; under torchrun, the launcher's count). Ranks sample with "
                                            "their own seeds, so the count is part of the run")
    allocator: Literal["auto", "system", "jemalloc", "tcmalloc"] = Field(
        "auto", description="the memory allocator `shrinkthink run` starts its processes with (allocator.py): auto "
                            "takes tcmalloc, else jemalloc, where installed; system keeps glibc's malloc. The "
                            "numbers are the same with each; the speed is not")
    logging: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="trackers that get every metrics.jsonl scalar while the run goes "
        "(metrics.jsonl is always written): tensorboard: event files in <run_dir>/tensorboard (pip install "
        "tensorboard); wandb: Weights & Biases in <run_dir>/wandb, offline unless WANDB_MODE or an API key says "
        "online (pip install wandb)")
    log_completions_every: int = Field(
        0, ge=0, description="every N steps of an explore or shrink stage, a table of the step's sampled completions "
        "(problem, completion, reward and each component, tokens) to samples/completions.jsonl and each tracker; "
        "0: never")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the policy's model")
    task: TaskConfig = Field(default_factory=TaskConfig, description="the task the curriculum trains on")
    stages: list[Stage] = Field(..., min_length=1, description="the curriculum: stages run in order, each from "
                                                              "the policy the one before it ended with")

    @model_validator(mode="after")
    def _unique_stage_names(self):
        names = [stage.name for stage in self.stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stage names must be unique: {', '.join(duplicates)}")
        coconut = [i for i, s in enumerate(self.stages) if s.kind == "latent" and s.method == "coconut"]
        if self.model.gradient_checkpointing and coconut:
            # transformers drops the cache in checkpointed training layers: each continuous thought
            # would stop seeing the ones before it, with no error
            raise ValueError(f"model.gradient_checkpointing: stages.{coconut[0]} (coconut) feeds its thoughts through "
                             "the cache, which checkpointed layers drop; turn one of them off")
        return self


def _parse_value(text: str) -> Any:
    """`key=value` values are YAML scalars or flow collections: 3, 0.5, true, [1, 2], {a: 1}."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict, dotted: str) -> None:
    """Set `a.b.0.c=value` in nested dicts/lists. A list item is named by its index or, in a list
    of mappings with `name` keys (stages, criteria, editors), by its name: `stages.explore.steps=50`."""
    if "=" not in dotted:
        raise UserError(f"override '{dotted}': expected key=value")
    key, value = dotted.split("=", 1)
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            index: Any = _list_index(node, part, key)
        elif isinstance(node, dict):
            index = part
            if not last and index not in node:
                node[index] = {}
        else:
            raise UserError(f"override '{key}': '{'.'.join(parts[:i])}' is not a mapping or list")
        if last:
            node[index] = _parse_value(value)
        else:
            node = node[index]


def _list_index(items: list, part: str, key: str) -> int:
    """The index `part` names in `items`: an integer, else the first item whose `name` it is."""
    if part.isdigit() and int(part) < len(items):
        return int(part)
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    if not part.isdigit() and part in names:
        return names.index(part)
    known = ", ".join(str(name) for name in names if name is not None)
    also = f" nor one of its names ({known})" if known else ""
    raise UserError(f"override '{key}': '{part}' is not an index of a {len(items)}-item list{also}")


_TAGS = {"warmstart", "explore", "shrink", "latent", "length_penalty", "token_budget", "group_length",
         "shortest_correct", "overlong", "step_validity", "format", "lean", "reward", "ablation_critic",
         "llm_critic", "paraphrase"}


def _field_path(location: tuple) -> str:
    # pydantic puts the discriminator tag ('warmstart') into the location: drop it for users.
    return ".".join(str(p) for p in location if p not in _TAGS)


def format_validation_error(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    field = _field_path(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "union_tag_invalid":
        context = first.get("ctx", {})
        message = (f"unknown {context.get('discriminator', 'kind').strip(chr(39))} {context.get('tag')!r} "
                   f"(known: {context.get('expected_tags')})")
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {field or 'config'}: {message}{suffix}"


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read YAML (the embedded quickstart when `path` is None), apply overrides, validate."""
    source = Path(path) if path else DEFAULT_CONFIG
    if not source.is_file():
        raise UserError(f"config: no such file '{source}'")
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else str(source)
        raise UserError(f"{where}: invalid YAML: {getattr(error, 'problem', error)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: the config must be a mapping of fields")
    for override in overrides:
        apply_override(data, override)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise UserError(format_validation_error(error, str(source))) from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
