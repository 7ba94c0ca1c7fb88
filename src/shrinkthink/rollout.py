"""Batched sampling with a KV cache: G attempts per problem, temperature and top-p, finished rows
dropped from the batch, and the sampled log-probabilities the learner's clipped ratio needs.

Prompts are left-padded so every row's next token sits in the last column; position ids count
real tokens only, so a row's positions are the same as in an unpadded forward pass (the learner
recomputes log-probabilities right-padded and must see the same positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shrinkthink.decoders import HFDecoder, LlamaDecoder

# Dropping finished rows copies the KV cache; do it only once this share of the batch is idle.
COMPACT_IDLE_SHARE = 0.25
# Prompts that open with the same tokens (a chat template's system turn, a task's instructions)
# have that prefix prefilled once for all rows; a shorter one (a lone BOS) is not worth the call.
MIN_SHARED_PREFIX = 8


@dataclass
class Samples:
    completion_ids: list[list[int]]
    logprobs: list[list[float]]
    finished: list[bool]
    entropy_sum: float
    tokens: int

    @classmethod
    def concat(cls, parts) -> Samples:
        """The rows of `parts`, in order, as one `Samples`."""
        return cls(
            completion_ids=[c for p in parts for c in p.completion_ids],
            logprobs=[lp for p in parts for lp in p.logprobs],
            finished=[f for p in parts for f in p.finished],
            entropy_sum=sum(p.entropy_sum for p in parts),
            tokens=sum(p.tokens for p in parts),
        )


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches `top_p` (nucleus sampling,
    Holtzman et al. 2019); the rest get -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before this token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def shared_prefix(prompts: list[list[int]]) -> int:
    """How many leading tokens all prompts share, leaving each at least one of its own (its last
    position's logits start the completion); 0 when under `MIN_SHARED_PREFIX`."""
    if len(prompts) < 2:
        return 0
    shared = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for prompt in prompts[1:]:
        shared = next((i for i in range(shared) if prompt[i] != first[i]), shared)
    return shared if shared >= MIN_SHARED_PREFIX else 0


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from `probs` [B, V] (rows need not sum to 1) by inverting the CDF: one
    uniform number a row and a binary search. `torch.multinomial` draws an exponential variate for
    every vocabulary entry instead: 29 ms a step at batch 32 over SmolLM2's 49k tokens on the dev
    CPU, against under 1 ms for the cumulative sum."""
    cdf = probs.cumsum(-1)  # [B, V]
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=probs.device, dtype=probs.dtype) * total
    # strictly below the total, so a token of zero probability (cdf flat there) is never chosen
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


@torch.no_grad()
def sample(
    model,
    prompts: list[list[int]],
    *,
    eos_ids: set[int],
    pad_id: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    generic: bool = False,
    dtype: torch.dtype | None = None,
    banned_ids: set[int] | frozenset[int] = frozenset(),
) -> Samples:
    """Sample one completion per prompt (repeat a prompt G times for a group). `generic` forces the
    model's own `forward` instead of the lean Llama-family decoder; `dtype` runs the matmuls in
    that precision (the lean decoder from weight copies, the generic one under autocast).
    `banned_ids` are never chosen, greedy or sampled (a latent policy's `<bot>`, `<eot>`,
    `<thought>`: markers, not text)."""
    device = next(model.parameters()).device
    n = len(prompts)
    lean = not generic and LlamaDecoder.supports(model)
    # A group repeats its prompt G times: the lean decoder runs each distinct prompt once and
    # copies its cache rows (the generic path keeps one row per prompt: wrappers may hold state).
    slot: dict[tuple[int, ...], int] = {}
    source = [slot.setdefault(tuple(p), len(slot)) for p in prompts] if lean else list(range(n))
    distinct = [list(p) for p in slot] if lean else prompts
    shared = shared_prefix(distinct) if lean else 0
    ids, mask = left_pad([p[shared:] for p in distinct], pad_id, device)
    # A row's cache: the shared prefix, its padding, its own tokens; positions count real tokens.
    positions = shared + (mask.cumsum(-1) - 1).clamp(min=0)
    if lean:
        decoder = LlamaDecoder(model, len(distinct), shared + ids.shape[1] + max_new_tokens, dtype=dtype)
    else:
        decoder = HFDecoder(model, dtype)
    if shared:
        prefix = torch.tensor([distinct[0][:shared]], device=device)
        decoder.prefill(prefix, torch.ones_like(prefix), torch.arange(shared, device=device)[None])
    logits = decoder.prefill(ids, mask, positions)
    if len(distinct) < n:
        expand = torch.tensor(source, device=device)
        decoder.select(expand)
        logits, positions = logits[expand], positions[expand]
    next_position = positions[:, -1] + 1
    # Every check of "all done?" or "time to compact?" copies a flag to the host, which on a GPU
    # waits for the queued kernels; there it happens every few tokens, on a CPU every token.
    check_every = 1 if device.type == "cpu" else 8

    rows = torch.arange(n, device=device)  # original index of each active row
    done = torch.zeros(n, dtype=torch.bool, device=device)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    banned = torch.tensor(sorted(banned_ids), dtype=torch.long, device=device) if banned_ids else None
    tokens = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros((n, max_new_tokens), device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    entropy_sum = torch.zeros((), device=device)
    # What each token step produced, for the rows active in this segment (the steps since the
    # batch was last compacted); written into the outputs once per segment, not once per token.
    segment_start, segment = 0, {"token": [], "logp": [], "entropy": [], "live": []}

    def flush(end: int) -> None:
        nonlocal entropy_sum
        if not segment["token"]:
            return
        live = torch.stack(segment["live"], 1)  # [active, steps]
        tokens[rows, segment_start:end] = torch.stack(segment["token"], 1).masked_fill(~live, pad_id)
        logps[rows, segment_start:end] = torch.stack(segment["logp"], 1).masked_fill(~live, 0.0)
        lengths[rows] += live.sum(1)
        entropy_sum = entropy_sum + (torch.stack(segment["entropy"], 1) * live).sum()
        for values in segment.values():
            values.clear()

    active, t = n, -1
    for t in range(max_new_tokens):
        scaled = logits if temperature == 1.0 else logits / temperature
        if banned is not None:
            # the lowest finite score, not -inf: probability 0, and the entropy's p * score stays 0
            scaled.index_fill_(-1, banned, torch.finfo(scaled.dtype).min)
        # Three passes over the vocabulary a step (softmax, the draw's cumsum, one dot product)
        # instead of five: log p(token) from its probability, the entropy as
        # logsumexp - E_p[logit], with logsumexp = logit(token) - log p(token).
        p_all = scaled.softmax(-1)  # [active, V]
        if greedy:
            token = (logits if banned is None else scaled).argmax(-1)
        elif top_p < 1.0:
            token = draw(top_p_filter(scaled, top_p).softmax(-1), generator)
        else:
            token = draw(p_all, generator)
        live = ~done
        logp = p_all.gather(-1, token[:, None]).squeeze(-1).log()  # > 0: a drawn or greedy token
        segment["token"].append(token)
        segment["live"].append(live)
        segment["logp"].append(logp)
        chosen = scaled.gather(-1, token[:, None]).squeeze(-1)
        segment["entropy"].append(chosen - logp - torch.linalg.vecdot(p_all, scaled))
        done = done | (torch.isin(token, eos) & live)
        if t == max_new_tokens - 1:
            break
        if t % check_every == check_every - 1:
            idle = int(done.sum())  # one host sync answers both questions
            if idle == active:
                break
            if idle >= COMPACT_IDLE_SHARE * active:
                flush(t + 1)
                segment_start = t + 1
                keep = (~done).nonzero().squeeze(-1)
                decoder.select(keep)
                rows, next_position, done = rows[keep], next_position[keep], done[keep]
                token = token[keep]
                active = len(keep)
        token = token.masked_fill(done, pad_id)
        logits = decoder.step(token, ~done, next_position)
        next_position = next_position + 1
    flush(t + 1)
    # a row finished iff its last kept token is an end-of-sequence token
    last = tokens.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
    finished = torch.isin(last, eos) & (lengths > 0)

    lengths_list = lengths.tolist()
    tokens_list, logps_list = tokens.tolist(), logps.tolist()
    return Samples(
        completion_ids=[tokens_list[i][: lengths_list[i]] for i in range(n)],
        logprobs=[logps_list[i][: lengths_list[i]] for i in range(n)],
        finished=finished.tolist(),
        entropy_sum=float(entropy_sum),
        tokens=int(sum(lengths_list)),
    )
