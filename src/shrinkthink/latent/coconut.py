"""COCONUT continuous thoughts (Hao et al. 2024, "Training Large Language Models to Reason in a
Continuous Latent Space", arXiv 2412.06769), written from the paper.

A sequence reads `question <bot> <thought>*n <eot> remaining steps, answer`. Every `<thought>`
position is not a token: its input embedding is the last hidden state of the position before it,
so n thoughts need n+1 forward passes, each reusing the KV cache of the one before. At curriculum
stage k the first k reasoning steps are replaced by k*c thoughts; past `max_latent_stage` every step
is (Sec. 3, "Training Procedure"). The loss is masked on the question, the markers and the thoughts.

Departures from the paper's code: the number of thoughts at inference is fixed by the stage
(`thoughts_at`), never read from the held-out example's gold steps; generation is batched and
decodes with the KV cache after the latent pass (`ContinuousThoughts` runs inside
`rollout.sample`'s generic decoder); and, as an option (`thought_targets`), each thought is also
trained to predict one of the last tokens of the step it replaces, which took the quickstart's
1M-parameter model from 0.47 to 0.94 with no visible reasoning (docs/results.md). In training a
Llama-family model's passes run through `passes.LlamaPasses`: the same arithmetic as its `forward`,
in fewer calls.

    python -m pytest tests/test_latent.py -q
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn
from transformers import DynamicCache

from shrinkthink.decoders import cache_argument
from shrinkthink.latent.passes import LlamaPasses

BOT, EOT, THOUGHT = "<bot>", "<eot>", "<thought>"
THOUGHT_NORM_KEY = "coconut_thought_norm"  # in the model's config, saved with its weights


@dataclass(frozen=True)
class LatentTokens:
    bot: int
    eot: int
    thought: int


def add_latent_tokens(model, tokenizer, init_from: str | None = None) -> LatentTokens:
    """Add `<bot>`, `<eot>`, `<thought>` to the tokenizer and grow the embeddings to match.
    Idempotent: a checkpoint that has them keeps them. New rows start as the embedding of the
    first token of `init_from` (the mean embedding when None): on the quickstart's 1M-parameter
    model, markers at the mean embedding raise the loss on its own transcripts from 0.003 to 0.84,
    markers that start as a space to 0.08."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in (BOT, EOT, THOUGHT) if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
        tokens = latent_tokens(tokenizer)
        source = tokenizer(init_from, add_special_tokens=False).input_ids[:1] if init_from else []
        if source:
            with torch.no_grad():
                weight = model.get_input_embeddings().weight
                for new in (tokens.bot, tokens.eot, tokens.thought):
                    weight[new] = weight[source[0]]
    return latent_tokens(tokenizer)


def latent_tokens(tokenizer) -> LatentTokens:
    vocab = tokenizer.get_vocab()
    return LatentTokens(bot=vocab[BOT], eot=vocab[EOT], thought=vocab[THOUGHT])


# --- the curriculum, as pure functions ---------------------------------------------------------
def stage_plan(n_steps: int, stage: int, thoughts_per_step: int, max_latent_stage: int) -> tuple[int, int]:
    """(reasoning steps replaced, continuous thoughts) for an example of `n_steps` steps at
    curriculum stage `stage`. Stage 0 is the full chain of thought between empty markers; stage
    k <= max_latent_stage replaces the first k steps by k*c thoughts; beyond it every step is
    replaced and the thoughts stay at max_latent_stage*c."""
    if stage > max_latent_stage:
        return n_steps, max_latent_stage * thoughts_per_step
    return min(stage, n_steps), stage * thoughts_per_step


def thoughts_at(stage: int, thoughts_per_step: int, max_latent_stage: int) -> int:
    """Continuous thoughts a policy at `stage` uses when it answers (independent of the example)."""
    return min(stage, max_latent_stage) * thoughts_per_step


def example_stage(phase: int, n_steps: int, rng: random.Random, earlier_stage_share: float = 0.0,
                  uniform_prob: float = 0.0) -> int:
    """The curriculum stage one training example of `n_steps` steps is built at while the stage's
    curriculum is at `phase`. With probability `uniform_prob` any stage, drawn uniformly from
    0..n_steps (the reference's `uniform_prob` in `get_cot_latent_dataset`: stages past
    max_latent_stage all mean every step latent, as in `stage_plan`); else, with probability
    `earlier_stage_share`, an earlier stage, uniform over 0..phase-1 (ours: so the model keeps
    reasoning in language); else `phase`."""
    if uniform_prob and rng.random() < uniform_prob:
        return rng.randrange(n_steps + 1)
    # one draw whenever phase > 0, even at share 0: the random stream earlier runs were made with
    if phase > 0 and rng.random() < earlier_stage_share:
        return rng.randrange(phase)
    return phase


def coconut_example(prompt: list[int], steps: list[list[int]], answer: list[int], stage: int,
                    thoughts_per_step: int, max_latent_stage: int, tokens: LatentTokens
                    ) -> tuple[list[int], list[bool]]:
    """Token ids of one training sequence and its loss mask (True where the token is a target):
    `prompt <bot> <thought>*n <eot>` is context, the steps left and the answer are targets."""
    replaced, n = stage_plan(len(steps), stage, thoughts_per_step, max_latent_stage)
    context = prompt + [tokens.bot] + [tokens.thought] * n + [tokens.eot]
    targets = [t for step in steps[replaced:] for t in step] + answer
    return context + targets, [False] * len(context) + [True] * len(targets)


def thought_targets(steps: list[list[int]], stage: int, thoughts_per_step: int, max_latent_stage: int) -> list[int]:
    """`thought_targets: true` (a departure from the paper, whose thoughts are unsupervised): the
    token each continuous thought of an example is trained to predict, or -100 for none. Thought j
    of the i-th replaced step targets that step's (len - c + j)-th token, so its c thoughts carry
    the step's last c tokens (`steps`: each step's tokens without its line break; on a `refer`
    transcript, `12+7=19`, three thoughts carry `=19`, the running value). Thoughts past the
    example's replaced steps (a short example at a late stage) have no target."""
    replaced, n = stage_plan(len(steps), stage, thoughts_per_step, max_latent_stage)
    targets = [-100] * n
    for i in range(min(n, replaced * thoughts_per_step)):
        step, j = steps[i // thoughts_per_step], i % thoughts_per_step
        k = len(step) - thoughts_per_step + j
        targets[i] = step[k] if k >= 0 else -100
    return targets


def latent_prompts(prompts: list[list[int]], tokens: LatentTokens, thoughts: int) -> list[list[int]]:
    """What the model sees before it answers: the question, then the latent block."""
    return [p + [tokens.bot] + [tokens.thought] * thoughts + [tokens.eot] for p in prompts]


def pad_aligned(rows: list[list[int]], masks: list[list[bool]], anchor: list[int], pad_id: int):
    """Batch rows so that every row's `anchor` index (its `<bot>`) falls in the same column: the
    k-th thought of every row then shares a column and a batch needs max(n)+1 passes, not more.
    Returns ids, attention mask, loss mask [B, T]."""
    left = [max(anchor) - a for a in anchor]
    width = max(shift + len(row) for shift, row in zip(left, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (shift, row, mask) in enumerate(zip(left, rows, masks)):
        ids[i, shift : shift + len(row)] = torch.tensor(row)
        attention[i, shift : shift + len(row)] = 1
        loss_mask[i, shift : shift + len(row)] = torch.tensor(mask, dtype=torch.bool)
    return ids, attention, loss_mask


def thought_label_columns(contents: list[list[int]], anchors: list[int], width: int) -> torch.Tensor:
    """`thought_targets` of each row placed where `pad_aligned` put its thoughts: the k-th thought
    of every row sits in column max(anchor) + 1 + k. [B, width], -100 where no thought is targeted."""
    labels = torch.full((len(contents), width), -100, dtype=torch.long)
    first = max(anchors) + 1
    for row, content in enumerate(contents):
        labels[row, first : first + len(content)] = torch.tensor(content, dtype=torch.long)
    return labels


# --- the model ----------------------------------------------------------------------------------
class ContinuousThoughts(nn.Module):
    """Wraps any Hugging Face causal LM. `forward` takes the LM's own arguments; wherever
    `input_ids` holds `<thought>`, the input embedding is the last hidden state of the position
    before. Works with a KV cache handed in (generation) or its own (training, gradients flow
    through the cache into earlier passes).

    `thought_norm` (default: the model config's `coconut_thought_norm`, so a saved checkpoint
    answers as it was trained): when set, each fed-back state is rescaled to that L2 norm. The
    paper feeds the state as it is; on a small model with tied embeddings the final-norm output is
    ~18x longer than an input embedding (quickstart model: 14.3 against 0.81) and swamps the
    residual stream at the thought's position."""

    def __init__(self, model, thought_id: int, thought_norm: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.thought_id = thought_id
        self.thought_norm = thought_norm if thought_norm is not None else getattr(
            model.config, THOUGHT_NORM_KEY, None)
        self.cache_name = cache_argument(model)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache: bool = True, **_):
        """With `use_cache=False` (training: no cache wanted back) a Llama-family model runs its
        passes through `LlamaPasses`, the same arithmetic in fewer calls; `past_key_values` of
        the result is then None."""
        batch, width = input_ids.shape
        lean = not use_cache and past_key_values is None and LlamaPasses.supports(self.model)
        cache = None if lean else past_key_values if past_key_values is not None else DynamicCache()
        past = 0 if cache is None else cache.get_seq_length()
        if attention_mask is None:
            attention_mask = torch.ones((batch, past + width), dtype=torch.long, device=input_ids.device)
        if position_ids is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
        tokens = self.model.get_input_embeddings()(input_ids)  # [B, T, H]
        is_thought = input_ids == self.thought_id  # [B, T]
        columns = is_thought.any(0).nonzero().flatten().tolist()
        if columns and columns[0] == 0:
            raise ValueError("a <thought> needs a position before it (the first column is one)")
        passes = LlamaPasses(self.model, attention_mask, position_ids) if lean else None
        bounds = [0, *columns, width]
        logits, last_hidden = [], None
        for start, end in itertools.pairwise(bounds):
            if start == end:
                continue
            embeds = tokens[:, start:end]
            if last_hidden is not None:  # the first column of this pass is a thought for some rows
                first = torch.where(is_thought[:, start, None], last_hidden, embeds[:, 0])
                embeds = torch.cat([first[:, None], embeds[:, 1:]], dim=1)
            if passes is not None:
                span_logits, last_hidden = passes.run(embeds, start)
            else:
                out = self.model(inputs_embeds=embeds, attention_mask=attention_mask[:, : past + end],
                                 position_ids=position_ids[:, start:end], use_cache=True,
                                 output_hidden_states=True, **{self.cache_name: cache})
                span_logits, last_hidden = out.logits, out.hidden_states[-1][:, -1]  # post final norm
            logits.append(span_logits)
            last_hidden = last_hidden.to(tokens.dtype)  # [B, H]
            if self.thought_norm:
                last_hidden = last_hidden * (self.thought_norm / last_hidden.norm(dim=-1, keepdim=True).clamp(min=1e-6))
        return SimpleNamespace(logits=torch.cat(logits, dim=1), past_key_values=cache)


class PauseTokens(nn.Module):
    """The pause-token baseline (`method: pause`; Goyal et al. 2024, "Think before you speak"):
    the same sequences as COCONUT, but every `<thought>` is an ordinary token whose input is its
    own learned embedding, so no hidden state is carried forward. One forward pass of the model;
    a third-party replication of COCONUT on ProsQA found such tokens, trained with the same
    curriculum, match continuous thoughts (96.6 against 97.0): the baseline a latent method must beat."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, use_cache: bool = False, **_):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # rows are left-padded (`pad_aligned`): positions count from each row's first token
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache)
        return SimpleNamespace(logits=out.logits, past_key_values=None)


def mean_embedding_norm(model) -> float:
    """Mean L2 norm of the input embedding rows: the length `thought_scale: embedding` gives a thought."""
    return float(model.get_input_embeddings().weight.detach().norm(dim=-1).mean())


def coconut_loss(wrapper: ContinuousThoughts, ids, attention, loss_mask, thought_labels=None,
                 counts: tuple[int, int] | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the target tokens of a batch from `pad_aligned`; with
    `thought_labels` [B, T] (a thought's target token in its column, -100 elsewhere: see
    `thought_targets`), plus the mean cross-entropy of the position before each thought, whose
    last hidden state the thought is, against that target. `counts`: (target tokens, targeted
    thoughts) of the whole batch when these rows are one rank's share of it; each mean then
    divides by those, so the ranks' losses add up to the whole batch's."""
    logits = wrapper(ids, attention_mask=attention, use_cache=False).logits[:, :-1].float()
    targets, mask = ids[:, 1:], loss_mask[:, 1:]
    losses = nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    loss = (losses * mask).sum() / (mask.sum().clamp(min=1) if counts is None else max(1, counts[0]))
    if thought_labels is not None and bool((thought_labels[:, 1:] >= 0).any()):
        if counts is None:
            loss = loss + nn.functional.cross_entropy(logits.transpose(1, 2), thought_labels[:, 1:], ignore_index=-100)
        else:
            loss = loss + nn.functional.cross_entropy(logits.transpose(1, 2), thought_labels[:, 1:], ignore_index=-100,
                                                      reduction="sum") / max(1, counts[1])
    return loss
