"""Compressed Chain of Thought (Cheng & Van Durme 2024, "Compressed Chain of Thought: Efficient
Reasoning through Dense Representations", arXiv 2412.13171), written from the paper.

The model answers after a variable number of contemplation tokens, about r times as many as its
full reasoning has tokens (r: `compression_ratio`). A contemplation token is not a token: its
input is a dense state, the layer-l hidden state of the position before it (l: the paper's
autoregressive layer, 15 of LLaMA2-7B's 32; here half the model's layers unless set). A sequence
reads `question <bot> z_1 .. z_k <eot> answer`: the layer-l output at <bot> is z_1, at z_j it is
z_{j+1}, and the answer is decoded after <eot>.

Training, one parallel forward pass a batch (`training_losses`):
- targets: the teacher (the model as the stage found it, frozen) reads question + full reasoning;
  its layer-l states at k = ceil(r m) of the m reasoning positions are the gold z_1 .. z_k
  (`select_positions`, `teacher_states`), computed once for the pool: they never change.
- contemplation (the paper's CCoT_phi): teacher forcing, the inputs are the gold states shifted by
  one, and the layer-l outputs at <bot>, z_1 .. z_{k-1} are fitted to z_1 .. z_k (`state_loss`).
- answer and stop (the paper's DECODE_psi and END_psi): as in the paper, on contemplation tokens
  the model generates itself (k of them, no gradient through their generation), the answer's
  cross-entropy, and a binary stop classifier at <bot>, z_1 .. z_k: stop after z_k, go on before.

Generation (`contemplate`, `CompressedThoughts`): left-padded prompts, batched, one column a
contemplation token over a KV cache, until the stop rule ends each row (or `max_thoughts`); the
generic sampler then prefills `question <bot> <thought>*k <eot>`, each <thought> input being the
state generated for it, and decodes the answer with its own KV cache.

Departures from the paper:
- one model, fully fine-tuned, is CCoT_phi, DECODE_psi and END_psi at once, and trains them
  jointly (the paper: two LoRA modules, phi trained first, then psi with phi frozen).
- positions are evenly spaced, the last of each of k equal spans of the reasoning, not the top k
  of a learned linear scorer over layer-3 states.
- the fit is of the layer-l state only, end to end through the layers below (the paper fits the
  chosen positions' states layer by layer).
- END is read from the LM head: the probability of `<eot>` as the next token, trained as the
  binary classifier, so a checkpoint needs no module beyond its weights; a row stops when it
  exceeds `end_threshold`. `stop_rule: mean` instead gives every answer the pool's mean k.
- the squared error is divided by the targets' variance over the pool (ours), so the contemplation
  loss is near 1 for a model that predicts the mean state, at any layer and model width.

    python -m pytest tests/test_ccot.py -q
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from shrinkthink.decoders import cache_argument
from shrinkthink.errors import UserError
from shrinkthink.latent.coconut import LatentTokens, pad_aligned
from shrinkthink.rollout import left_pad


# --- the method, as pure functions ----------------------------------------------------------------
def thought_count(reasoning_tokens: int, ratio: float) -> int:
    """k = ceil(r m) contemplation tokens for m reasoning tokens (0 for none, at most m)."""
    # rounded first: 0.1 * 30 is 3.0000000000000004 in floating point, which must stay 3
    return min(reasoning_tokens, math.ceil(round(ratio * reasoning_tokens, 9)))


def select_positions(reasoning_tokens: int, count: int) -> list[int]:
    """Which of the m reasoning positions the k contemplation tokens reproduce: the last position of
    each of k equal spans, ceil(j m / k) - 1 for j = 1 .. k, so the last one has read the whole
    reasoning and each state sums up the span that ends there."""
    m, k = reasoning_tokens, count
    return [((j + 1) * m + k - 1) // k - 1 for j in range(k)]


def resolve_layer(model, layer: int | None) -> int:
    """The autoregressive layer l as an index of `hidden_states` (1: the first decoder layer's
    output; the last: the final-norm output); None is half the model's layers."""
    depth = model.config.num_hidden_layers
    if layer is None:
        return max(1, depth // 2)
    if layer > depth:
        raise UserError(f"autoregressive_layer: {layer} is past the model's {depth} layers")
    return layer


def target_scale(states: list[torch.Tensor]) -> float:
    """The targets' variance over the pool, per dimension and averaged: the contemplation loss's
    unit, so it reads alike at any layer and width (1 for a model that predicts the mean state)."""
    rows = [s for s in states if len(s)]
    if not rows:
        return 1.0
    every = torch.cat(rows).float()  # [N, H]
    if len(every) < 2:
        return float(every.pow(2).mean().clamp(min=1e-12))
    return float((every - every.mean(0)).pow(2).mean().clamp(min=1e-12))


def state_loss(predicted: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, scale: float,
               count: int | None = None) -> torch.Tensor:
    """Mean squared error of the predicted states [B, K, H] against the gold ones [B, K, H] where
    `mask` [B, K] is set, averaged over the dimensions and divided by `scale`; summed over the
    positions, then divided by `count` (default: the positions here)."""
    error = (predicted.float() - targets.float()).pow(2).mean(-1)  # [B, K]
    total = (error * mask).sum()
    return total / (scale * (max(1, count) if count is not None else mask.sum().clamp(min=1)))


def end_loss(logits: torch.Tensor, eot_id: int, stop: torch.Tensor, go: torch.Tensor,
             count: int | None = None) -> torch.Tensor:
    """END as a binary classifier read from the LM head: p = P(`<eot>` next) at each contemplation
    position [B, K+1, V]; -log p where the row stops (`stop` [B, K+1]), -log(1 - p) where it goes on
    (`go`); summed, then divided by `count` (default: the positions here)."""
    logits = logits.float()
    everything = logits.logsumexp(-1)
    stop_logp = logits[..., eot_id] - everything
    others = logits.index_fill(-1, torch.tensor([eot_id], device=logits.device), float("-inf"))
    go_logp = others.logsumexp(-1) - everything  # log(1 - p), without cancelling near p = 1
    total = -(stop_logp * stop).sum() - (go_logp * go).sum()
    return total / (max(1, count) if count is not None else (stop.sum() + go.sum()).clamp(min=1))


def stop_positions(counts: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(stop, go) masks [B, width] over the positions <bot>, z_1 .. of rows with `counts`
    contemplation tokens: a row goes on at its first k positions and stops at position k."""
    columns = torch.arange(width)[None, :]
    k = torch.tensor(counts)[:, None]
    return columns == k, columns < k


# --- generation -----------------------------------------------------------------------------------
def _stop_probability(logits: torch.Tensor, eot_id: int) -> torch.Tensor:
    return logits.float().softmax(-1)[:, eot_id]


@torch.no_grad()
def contemplate(model, prompts: list[list[int]], tokens: LatentTokens, layer: int, pad_id: int, *,
                counts: list[int] | None = None, max_thoughts: int = 0, end_threshold: float = 0.5
                ) -> list[torch.Tensor]:
    """The contemplation states [k_i, H] of each prompt, generated batched over a KV cache: the
    prompts and `<bot>` in one pass, then one column a contemplation token, its input the layer-l
    output of the column before. With `counts`, row i takes counts[i] of them; else END decides:
    a row stops at the first position whose P(`<eot>` next) exceeds `end_threshold`, or at
    `max_thoughts`. A stopped row's later columns are masked out and its positions stand still."""
    if not prompts:
        return []
    device = next(model.parameters()).device
    cache_name = cache_argument(model)
    ids, mask = left_pad([p + [tokens.bot] for p in prompts], pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                output_hidden_states=True, **{cache_name: cache})
    state = out.hidden_states[layer][:, -1]  # [B, H]: the input of each row's first contemplation token
    if counts is not None:
        need = torch.tensor(counts, device=device)
    else:
        need = torch.full((len(prompts),), max_thoughts, device=device)
        need = need.masked_fill(_stop_probability(out.logits[:, -1], tokens.eot) > end_threshold, 0)
    taken = torch.zeros(len(prompts), dtype=torch.long, device=device)
    live = taken < need  # rows that feed `state` as their next contemplation input
    fed, alive = [], []
    next_position = positions[:, -1] + 1
    while bool(live.any()):
        fed.append(state)
        alive.append(live)
        taken = taken + live.long()
        going = live & (taken < need)
        if not bool(going.any()):
            break  # every row has its last input: the pass after it would decide nothing
        mask = torch.cat([mask, live.long()[:, None]], dim=-1)
        out = model(inputs_embeds=state[:, None], attention_mask=mask, position_ids=next_position[:, None],
                    use_cache=True, output_hidden_states=True, **{cache_name: cache})
        next_position = next_position + live.long()
        state = out.hidden_states[layer][:, -1]
        if counts is None:
            going = going & ~(_stop_probability(out.logits[:, -1], tokens.eot) > end_threshold)
        live = going
    if not fed:
        return [state.new_zeros((0, state.shape[-1])) for _ in prompts]
    states, kept = torch.stack(fed, 1), torch.stack(alive, 1)  # [B, K, H], [B, K]
    return [states[row, kept[row]] for row in range(len(prompts))]


class CompressedThoughts(nn.Module):
    """A CCoT policy's model for the generic sampler. `contemplate(prompts)` generates each
    distinct prompt's contemplation states by `latent`'s stop rule (latent.json: `layer`,
    `stop_rule`, `thoughts`, `max_thoughts`, `end_threshold`) and returns the prompts to sample
    from, `prompt <bot> <thought>*k <eot>`; `forward` is the model's own, except that a `<thought>`
    input is the state generated for it (looked up by the row's tokens: the sampler keeps no row
    order, and equal prompts have equal states)."""

    def __init__(self, model, tokens: LatentTokens, latent: dict, pad_id: int) -> None:
        super().__init__()
        self.model = model
        self.tokens = tokens
        self.latent = latent
        self.pad_id = pad_id
        self.cache_name = cache_argument(model)
        self.states: dict[tuple[int, ...], torch.Tensor] = {}

    def contemplate(self, prompts: list[list[int]], batch_size: int = 512) -> list[list[int]]:
        distinct = list(dict.fromkeys(tuple(p) for p in prompts))
        fixed = self.latent.get("stop_rule") == "mean"
        thoughts = int(self.latent.get("thoughts", 0))
        blocks: dict[tuple[int, ...], list[int]] = {}
        for start in range(0, len(distinct), batch_size):
            chunk = [list(p) for p in distinct[start : start + batch_size]]
            states = contemplate(self.model, chunk, self.tokens, int(self.latent["layer"]), self.pad_id,
                                 counts=[thoughts] * len(chunk) if fixed else None,
                                 max_thoughts=int(self.latent.get("max_thoughts", thoughts)),
                                 end_threshold=float(self.latent.get("end_threshold", 0.5)))
            for prompt, state in zip(chunk, states):
                block = prompt + [self.tokens.bot] + [self.tokens.thought] * len(state) + [self.tokens.eot]
                self.states[tuple(block)] = state
                blocks[tuple(prompt)] = block
        return [blocks[tuple(p)] for p in prompts]

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache: bool = True, **_):
        embeds = self.model.get_input_embeddings()(input_ids)  # [B, T, H]
        thought = input_ids == self.tokens.thought
        if bool(thought.any()):
            embeds = embeds.clone()
            # only a prefill holds <thought>: its mask is as wide as its ids
            for row in thought.any(1).nonzero().flatten().tolist():
                real = input_ids[row] if attention_mask is None else input_ids[row][attention_mask[row].bool()]
                embeds[row, thought[row]] = self.states[tuple(real.tolist())].to(embeds.dtype)
        return self.model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache, **{self.cache_name: past_key_values})


# --- training -------------------------------------------------------------------------------------
@torch.no_grad()
def teacher_states(model, prompts: list[list[int]], reasonings: list[list[int]], counts: list[int], layer: int,
                   pad_id: int, batch_size: int = 32) -> list[torch.Tensor]:
    """The gold contemplation states [k_i, H] (float32, on the CPU) of each example: `model`'s
    layer-l states over `prompt + reasoning` at the reasoning positions `select_positions` picks."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        chunk = range(start, min(start + batch_size, len(prompts)))
        ids, mask = left_pad([prompts[i] + reasonings[i] for i in chunk], pad_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       output_hidden_states=True).hidden_states[layer]  # [B, T, H]
        width = ids.shape[1]
        for row, i in enumerate(chunk):
            first = width - len(reasonings[i])  # the reasoning ends every left-padded row
            picked = [first + j for j in select_positions(len(reasonings[i]), counts[i])]
            out.append(hidden[row, picked].float().cpu())
    model.train(was_training)
    return out


@dataclass
class Losses:
    state: torch.Tensor  # the contemplation tokens' fit to the teacher's states
    end: torch.Tensor  # the stop classifier
    answer: torch.Tensor  # the answer after generated contemplation tokens

    @property
    def total(self) -> torch.Tensor:
        return self.state + self.end + self.answer


def training_losses(model, prompts: list[list[int]], answers: list[list[int]], targets: list[torch.Tensor],
                    tokens: LatentTokens, layer: int, scale: float, pad_id: int,
                    totals: tuple[int, int, int] | None = None) -> Losses:
    """The three losses of a batch in one forward pass over its rows twice, `prompt <bot> z_1 .. z_k
    <eot> answer` with the gold states as z (teacher forcing: the state loss) and with the states
    the model generates now (no gradient through them: the END and answer losses). `totals`: the
    whole batch's (states, END positions, answer tokens) when these rows are one rank's share of
    it; each loss then divides by those, so the ranks' losses add up to the whole batch's."""
    device = next(model.parameters()).device
    counts = [len(t) for t in targets]
    training = model.training
    model.eval()  # as at inference (and a training-mode forward under gradient checkpointing keeps no cache)
    generated = contemplate(model, prompts, tokens, layer, pad_id, counts=counts)
    model.train(training)
    n, widest = len(prompts), max(counts)
    rows = [p + [tokens.bot] + [tokens.thought] * k + [tokens.eot] + a for p, k, a in zip(prompts, counts, answers)]
    anchors = [len(p) for p in prompts]
    ids, attention, _ = pad_aligned(rows + rows, [[True] * len(r) for r in rows + rows], anchors + anchors, pad_id)
    ids, attention = ids.to(device), attention.to(device)
    bot = max(anchors)  # every row's <bot> column; its k-th contemplation token is column bot + k
    embeds = model.get_input_embeddings()(ids)  # [2B, T, H]
    states = torch.zeros((2 * n, widest, embeds.shape[-1]), dtype=embeds.dtype, device=device)
    filled = torch.zeros((2 * n, widest), dtype=torch.bool, device=device)
    for row, (gold, made) in enumerate(zip(targets, generated)):
        states[row, : len(gold)] = gold.to(device, embeds.dtype)
        states[n + row, : len(made)] = made.to(embeds.dtype)
        filled[row, : len(gold)] = filled[n + row, : len(made)] = True
    if widest:
        block = torch.where(filled[..., None], states, embeds[:, bot + 1 : bot + 1 + widest])
        embeds = torch.cat([embeds[:, : bot + 1], block, embeds[:, bot + 1 + widest :]], dim=1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    # no logits over the prompts: nothing there is a target, and on a large vocabulary the head costs
    out = model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions, output_hidden_states=True,
                logits_to_keep=ids.shape[1] - bot)
    # contemplation: the layer-l outputs at <bot>, z_1 .. z_{k-1} of the teacher-forced rows are z_1 .. z_k
    predicted = out.hidden_states[layer][:n, bot : bot + widest]
    state = state_loss(predicted, states[:n], filled[:n], scale, None if totals is None else totals[0])
    # END over <bot>, z_1 .. z_k of the generated rows (logits column c is the sequence's bot + c)
    logits = out.logits[n:]  # [B, T - bot, V]
    stop, go = stop_positions(counts, widest + 1)
    end = end_loss(logits[:, : widest + 1], tokens.eot, stop.to(device), go.to(device),
                   None if totals is None else totals[1])
    # the answer, read from the <eot> column on (each column predicts the token in the next)
    labels = torch.full(logits.shape[:2], -100, dtype=torch.long)
    for row, (k, answer) in enumerate(zip(counts, answers)):
        labels[row, k + 1 : k + 1 + len(answer)] = torch.tensor(answer)  # k + 1: the <eot> column
    labels = labels.to(device)
    answer = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="sum")
    answer = answer / max(1, sum(map(len, answers)) if totals is None else totals[2])
    return Losses(state=state, end=end, answer=answer)
