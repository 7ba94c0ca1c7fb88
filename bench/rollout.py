"""Tokens per second of our rollout engine beside `model.generate`, same model, prompts, lengths
and sampling settings, in one run.

    python bench/rollout.py                 # SmolLM2-135M, batch 32 and 64
    python bench/rollout.py --batches 8 --new-tokens 32 --threads 1       # a quick look
    python bench/rollout.py --sample-dtype bfloat16     # ours: bfloat16 matmuls from the float32 model

Both sides sample (temperature 1, no top-p/top-k) exactly `--new-tokens` tokens per row: end of
sequence is switched off on both (`generate` through `min_new_tokens`, ours by passing no eos id),
so both do the same work and a tokens/s figure counts every row's tokens. The last three columns
have end-of-sequence on, on both sides: each row's tokens up to and including its end of sequence,
per second, summed over `--repeats` runs. `generate` keeps computing a finished row (it pads it)
until the longest row ends; ours drops finished rows from the batch. Rows end at different
lengths, and each side draws its own, so these depend on what the model says. `--group G` repeats each prompt G
times as GRPO does; our engine then runs each distinct prompt's prefill once. Prompts are reasoning-gym chain_sum
questions through the chat template, left-padded. Each figure is the best of `--repeats` runs
after one untimed warm-up run per side.

`--dtype` is the model's (both sides); `--sample-dtype bfloat16` is our `sampling.dtype: bfloat16`:
our engine runs its projections from bfloat16 copies of the weights while `generate` runs the model
as loaded, the setting a float32 policy in training samples with. That compares different
precisions: read it beside the `--dtype bfloat16` table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from shrinkthink.config import ModelConfig  # noqa: E402
from shrinkthink.policy import SAMPLER_DTYPES, Policy, pick_device  # noqa: E402
from shrinkthink.rollout import left_pad, sample  # noqa: E402
from shrinkthink.tasks import make_task  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="'smollm2', a .gguf file or a local HF folder")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side; the best is kept")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="both sides")
    parser.add_argument("--sample-dtype", choices=["model", "bfloat16"], default="model",
                        help="our engine only: sampling.dtype (bfloat16 matmuls from weight copies)")
    parser.add_argument("--group", type=int, default=1,
                        help="G: batch/G distinct prompts, each repeated G times (GRPO-shaped; 1: all distinct)")
    parser.add_argument("--skip-generate", action="store_true", help="time only our engine")
    return parser.parse_args()


def clocked(fn):
    """fn()'s result and the seconds it took, the device's queued work included."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    began = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - began


def timed(fn, new_tokens: int, repeats: int) -> float:
    """Best seconds of `repeats` calls of fn(new_tokens), after a short untimed warm-up call."""
    fn(8)  # allocator, lazy init, first-call kernels
    return min(clocked(lambda: fn(new_tokens))[1] for _ in range(repeats))


def eos_rate(fn, repeats: int) -> tuple[float, float]:
    """Tokens per second over `repeats` calls of fn() (each returns the tokens it sampled), and the
    mean tokens a call."""
    runs = [clocked(fn) for _ in range(repeats)]
    tokens, seconds = sum(t for t, _ in runs), sum(s for _, s in runs)
    return tokens / seconds, tokens / repeats


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    hf_logging.disable_progress_bar()

    device = pick_device(args.device)
    sample_dtype = SAMPLER_DTYPES[args.sample_dtype]
    policy = Policy.from_config(ModelConfig(kind="pretrained", path=args.model, dtype=args.dtype), device)
    model = policy.model.eval()
    parameters = sum(p.numel() for p in model.parameters())
    task = make_task("gym:chain_sum", {})
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch "
          f"{torch.__version__} with {torch.get_num_threads()} threads; python {platform.python_version()}; "
          f"device {device}, {next(model.parameters()).dtype}; our sampling dtype: {args.sample_dtype}")
    print(f"model: {args.model}, {parameters / 1e6:.1f}M params; {args.new_tokens} new tokens a row, "
          f"temperature 1, best of {args.repeats}; "
          + ("distinct prompts" if args.group == 1 else f"groups: each prompt {args.group} times"))
    print()
    print(f"{'':13s} {'every row ' + str(args.new_tokens) + ' tokens':^36s} {'end of sequence on':^38s}")
    print(f"{'batch':>5s} {'prompt':>6s} {'ours tok/s':>11s} {'generate tok/s':>15s} {'ratio':>6s} "
          f"{'ours tok/s':>11s} {'generate tok/s':>15s} {'ratio':>6s} {'mean tokens':>12s}")
    for batch in args.batches:
        problems = task.problems(1, max(1, batch // args.group), "train", seed=batch)
        prompts = [policy.prompt_ids(p.prompt) for p in problems for _ in range(args.group)][:batch]
        ids, mask = left_pad(prompts, policy.pad_id, device)
        tokens = batch * args.new_tokens

        # the keyword defaults bind this batch's prompts: every call below happens within the iteration
        def ours(new_tokens, eos_ids=frozenset(), *, prompts=prompts):
            return sample(model, prompts, eos_ids=set(eos_ids), pad_id=policy.pad_id,
                          max_new_tokens=new_tokens, temperature=1.0, dtype=sample_dtype)

        def theirs(new_tokens, eos_ids=None, *, ids=ids, mask=mask):
            with torch.no_grad():
                return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                      top_p=1.0, top_k=0, max_new_tokens=new_tokens,
                                      min_new_tokens=0 if eos_ids else new_tokens, pad_token_id=policy.pad_id,
                                      eos_token_id=sorted(eos_ids) if eos_ids else None)

        def their_tokens(out, *, ids=ids) -> int:
            """Each row's new tokens up to and including its first end of sequence."""
            new = out[:, ids.shape[1]:]
            ended = torch.isin(new, torch.tensor(sorted(policy.eos_ids), device=new.device))
            first = torch.where(ended.any(1), ended.int().argmax(1) + 1, new.shape[1])
            return int(first.sum())

        our_rate = tokens / timed(ours, args.new_tokens, args.repeats)
        our_eos = eos_rate(lambda: ours(args.new_tokens, policy.eos_ids).tokens, args.repeats)
        if args.skip_generate:
            print(f"{batch:5d} {ids.shape[1]:6d} {our_rate:11.1f} {'-':>15s} {'-':>6s} {our_eos[0]:11.1f} "
                  f"{'-':>15s} {'-':>6s} {our_eos[1]:12.1f}")
            continue
        their_rate = tokens / timed(theirs, args.new_tokens, args.repeats)
        their_eos = eos_rate(lambda: their_tokens(theirs(args.new_tokens, policy.eos_ids)), args.repeats)
        print(f"{batch:5d} {ids.shape[1]:6d} {our_rate:11.1f} {their_rate:15.1f} {our_rate / their_rate:5.2f}x "
              f"{our_eos[0]:11.1f} {their_eos[0]:15.1f} {our_eos[0] / their_eos[0]:5.2f}x "
              f"{our_eos[1] / batch:5.1f}/{their_eos[1] / batch:<5.1f}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
