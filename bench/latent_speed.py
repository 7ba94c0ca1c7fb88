"""Seconds per answer and answers per second for one model answering the same held-out questions
with explicit reasoning (the task's gold reasoning length, then the answer) or with continuous
thoughts (one per gold step, then the answer), batched. Also the way COCONUT's reference code
generates (one example at a time, the whole sequence recomputed for every token) on a few answers.

Timings only: the weights are random and every row decodes a fixed number of tokens (no early end
of sequence), so the rows differ only in what they compute.

    python bench/latent_speed.py --task prosqa --level 3 --depth 4
"""

from __future__ import annotations

import argparse
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shrinkthink.latent.coconut import (
    ContinuousThoughts,
    add_latent_tokens,
    latent_prompts,
)
from shrinkthink.model import tiny_policy
from shrinkthink.policy import Policy
from shrinkthink.rollout import sample
from shrinkthink.tasks import make_task
from shrinkthink.tasks.base import ANSWER_PREFIX, gold_completion

NEVER = {-1}  # no token id ends a row: every row decodes exactly max_new_tokens


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - began) / repeats


@torch.no_grad()
def reference_style(model, prompt: list[int], thought_id: int, new_tokens: int) -> None:
    """Batch 1, no cache: every thought and every token recomputes the whole sequence."""
    ids = torch.tensor([prompt])
    embeds = model.get_input_embeddings()(ids)
    for col in (ids[0] == thought_id).nonzero().flatten().tolist():
        hidden = model(inputs_embeds=embeds[:, :col], output_hidden_states=True).hidden_states[-1][:, -1]
        embeds = torch.cat([embeds[:, :col], hidden[:, None], embeds[:, col + 1 :]], dim=1)
    for _ in range(new_tokens):
        token = model(inputs_embeds=embeds).logits[:, -1].argmax(-1)
        embeds = torch.cat([embeds, model.get_input_embeddings()(token)[:, None]], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="prosqa")
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--depth", type=int, default=4, help="tiny model depth (12: a quarter of GPT-2 small)")
    parser.add_argument("--batch", type=int, default=64, help="answers per batch")
    parser.add_argument("--thoughts-per-step", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-answers", type=int, default=4, help="answers timed the reference way (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = tiny_policy(args.depth)
    tokens = add_latent_tokens(model, tokenizer)
    policy = Policy(model, tokenizer)
    model.eval()
    task = make_task(args.task, {})
    problems = task.problems(args.level, args.batch, "test", seed=0)
    prompts = [policy.prompt_ids(p.prompt) for p in problems]
    answer_tokens = round(sum(len(policy.completion_ids(ANSWER_PREFIX + p.answer)) for p in problems) / len(problems))
    explicit_tokens = round(sum(len(policy.completion_ids(gold_completion(p.steps, p.answer))) for p in problems)
                            / len(problems))
    thoughts = round(sum(len(p.steps) for p in problems) / len(problems)) * args.thoughts_per_step
    with_thoughts = latent_prompts(prompts, tokens, thoughts)
    wrapper = ContinuousThoughts(model, tokens.thought)

    rows = []

    def add(name: str, seconds_per_batch: float, answers: int, visible: int) -> None:
        rows.append((name, visible, seconds_per_batch / answers, answers / seconds_per_batch))

    explicit = timed(lambda: sample(model, prompts, eos_ids=NEVER, pad_id=policy.pad_id,
                                    max_new_tokens=explicit_tokens, greedy=True), args.repeats)
    add("explicit reasoning, lean decoder", explicit, len(prompts), explicit_tokens)
    generic = timed(lambda: sample(model, prompts, eos_ids=NEVER, pad_id=policy.pad_id,
                                   max_new_tokens=explicit_tokens, greedy=True, generic=True), args.repeats)
    add("explicit reasoning, HF forward", generic, len(prompts), explicit_tokens)
    latent = timed(lambda: sample(wrapper, with_thoughts, eos_ids=NEVER, pad_id=policy.pad_id,
                                  max_new_tokens=answer_tokens, greedy=True, generic=True), args.repeats)
    add(f"{thoughts} continuous thoughts, batched + KV cache", latent, len(prompts), answer_tokens)
    if args.reference_answers:
        few = with_thoughts[: args.reference_answers]
        reference = timed(lambda: [reference_style(model, p, tokens.thought, answer_tokens) for p in few], 1)
        add(f"{thoughts} continuous thoughts, reference way (batch 1, no cache)", reference, len(few), answer_tokens)

    parameters = sum(p.numel() for p in model.parameters())
    print(f"task {args.task} level {args.level}, depth {args.depth} ({parameters / 1e6:.2f}M parameters), "
          f"batch {args.batch}, {args.threads} threads; {explicit_tokens} tokens with explicit reasoning, "
          f"{thoughts} thoughts + {answer_tokens} tokens latent")
    print(f"{'how':58s} {'visible tokens':>14s} {'s/answer':>10s} {'answers/s':>10s}")
    for name, visible, per_answer, rate in rows:
        print(f"{name:58s} {visible:14d} {per_answer:10.5f} {rate:10.1f}")


if __name__ == "__main__":
    main()
