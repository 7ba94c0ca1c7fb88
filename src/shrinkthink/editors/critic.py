"""Critics delete what a transcript does not need.

- `AblationCritic`: delete one step (or, with `spans`, the derivation `a+b=` before a step's
  result) and let the policy continue greedily from the reasoning up to that point; keep the
  deletion when the answer still verifies and the reasoning got shorter. It needs no judge,
  only forward passes, and reports how many it spent.
- `LLMCritic`: any loadable model (or the policy itself) is shown the numbered steps and asked
  which are irrelevant; the steps it names are deleted, and the result re-verified.
"""

from __future__ import annotations

import re

from shrinkthink.editors import Edit, Editor, continue_and_verify, prefix_text, reasoning_lines
from shrinkthink.policy import Policy
from shrinkthink.records import Problem
from shrinkthink.tasks.base import ANSWER_PREFIX, Task, reasoning_part


def span_variant(line: str) -> str | None:
    """The line's result alone, `a+b=c` -> `c`: the derivation is a span the policy may be able
    to do without. None when the line has no `=` or nothing follows it."""
    if "=" not in line:
        return None
    result = line.rsplit("=", 1)[1].strip()
    return result if result and result != line.strip() else None


class AblationCritic(Editor):
    """Two ways to test a deletion. `regenerate` (the default): delete the line and everything
    after it, and let the policy write the rest again; it keeps what the policy can do without.
    But a policy with a habit writes the deleted line again, so a habit never goes. `keep_rest`:
    delete the line alone, walking from the last line back; keep the deletion when the policy,
    given the edited reasoning and `Answer: `, still answers right, and when the line after it
    stays as likely (teacher-forced, its first token aside) as with the line there, within
    `max_surprise` nats a token: a line whose content the next one builds on is kept."""

    name = "ablation_critic"

    def __init__(self, spans: bool = True, max_checks: int = 64, mode: str = "regenerate",
                 max_surprise: float = 1.0) -> None:
        self.spans = spans
        self.max_checks = max_checks
        self.mode = mode
        self.max_surprise = max_surprise

    def edit(self, policy: Policy, task: Task, items: list[tuple[Problem, str]], max_new_tokens: int) -> list[Edit]:
        if self.mode == "keep_rest":
            return self._keep_rest(policy, task, items, max_new_tokens)
        edits = [Edit(problem, text, text) for problem, text in items]
        lines = [reasoning_lines(text) for _, text in items]
        position = [0] * len(items)
        while True:
            # every item still being edited proposes its variants of the line at its position
            candidates: list[tuple[int, str, list[str]]] = []  # (item, kind, new prefix lines)
            for k, edit in enumerate(edits):
                i = position[k]
                if i >= len(lines[k]) or edit.checks >= self.max_checks:
                    continue
                candidates.append((k, "delete", lines[k][:i]))
                shorter = span_variant(lines[k][i]) if self.spans else None
                if shorter is not None:
                    candidates.append((k, "span", lines[k][:i] + [shorter]))
            if not candidates:
                break
            results = continue_and_verify(policy, task, [edits[k].problem for k, _, _ in candidates],
                                          [prefix_text(prefix) for _, _, prefix in candidates], max_new_tokens)
            accepted: dict[int, tuple[str, str]] = {}
            for (k, kind, _), result in zip(candidates, results):
                edits[k].checks += 1
                edits[k].forward_passes += result.forward_passes
                if k in accepted or not result.correct:
                    continue
                if (policy.count_tokens(reasoning_part(result.text))
                        < policy.count_tokens(reasoning_part(edits[k].after))):
                    accepted[k] = (kind, result.text)
            for k in {k for k, _, _ in candidates}:
                if k in accepted:
                    kind, text = accepted[k]
                    edits[k].after = text
                    lines[k] = reasoning_lines(text)
                    # a deletion brings a new line to this position: look at it next
                    position[k] += 1 if kind == "span" else 0
                else:
                    position[k] += 1
        return edits

    def _keep_rest(self, policy: Policy, task: Task, items: list[tuple[Problem, str]],
                   max_new_tokens: int) -> list[Edit]:
        edits = [Edit(problem, text, text) for problem, text in items]
        lines = [reasoning_lines(text) for _, text in items]
        answers = [ANSWER_PREFIX + (task.extract(text) or "") for _, text in items]
        prompt_ids = [policy.prompt_ids(problem.prompt) for problem, _ in items]
        position = [len(item_lines) - 1 for item_lines in lines]
        while True:
            candidates = [k for k, edit in enumerate(edits) if position[k] >= 0 and edit.checks < self.max_checks]
            if not candidates:
                break
            kept = {k: lines[k][: position[k]] + lines[k][position[k] + 1 :] for k in candidates}
            results = continue_and_verify(policy, task, [edits[k].problem for k in candidates],
                                          [prefix_text(kept[k]) + ANSWER_PREFIX for k in candidates], max_new_tokens)
            # the line after the deleted one (or the answer line), after the reasoning with and without it
            following = {k: (lines[k] + [answers[k]])[position[k] + 1] for k in candidates}
            prompts, completions = [], []
            for k in candidates:
                following_ids = policy.tokenizer(following[k], add_special_tokens=False).input_ids
                for before in (lines[k][: position[k] + 1], lines[k][: position[k]]):
                    prompts.append(prompt_ids[k]
                                   + policy.tokenizer(prefix_text(before), add_special_tokens=False).input_ids)
                    completions.append(following_ids)
            scores = policy.logprobs(prompts, completions)
            for j, (k, result) in enumerate(zip(candidates, results)):
                edits[k].checks += 1
                edits[k].forward_passes += result.forward_passes + 2
                with_line, without = scores[2 * j][1:], scores[2 * j + 1][1:]
                surprise = (sum(with_line) - sum(without)) / max(1, len(with_line))
                if result.correct and surprise <= self.max_surprise:
                    lines[k] = kept[k]
                    edits[k].after = prefix_text(kept[k]) + answers[k]
                position[k] -= 1
        return edits


CRITIC_PROMPT = (
    "Here is a worked solution, one numbered step a line.\n{steps}\n"
    "Which step numbers are irrelevant to reaching the answer {answer}? "
    "Reply with the numbers separated by commas, or 'none'.\n"
)


def named_steps(reply: str, count: int) -> set[int]:
    """1-based step numbers a critic's reply names, those that exist."""
    return {int(n) for n in re.findall(r"\d+", reply) if 1 <= int(n) <= count}


class LLMCritic(Editor):
    """`critic=None` asks the policy itself."""

    name = "llm_critic"

    def __init__(self, critic: Policy | None, max_new_tokens: int = 32) -> None:
        self.critic = critic
        self.max_new_tokens = max_new_tokens

    def edit(self, policy: Policy, task: Task, items: list[tuple[Problem, str]], max_new_tokens: int) -> list[Edit]:
        critic = self.critic or policy
        edits = [Edit(problem, text, text) for problem, text in items]
        lines = [reasoning_lines(text) for _, text in items]
        questions = []
        for (_problem, text), steps in zip(items, lines):
            numbered = "\n".join(f"{i + 1}. {line}" for i, line in enumerate(steps))
            questions.append(CRITIC_PROMPT.format(steps=numbered, answer=task.extract(text) or ""))
        replies = critic.sample([critic.prompt_ids(q) for q in questions], max_new_tokens=self.max_new_tokens,
                                greedy=True)
        kept: list[tuple[int, list[str]]] = []
        for k, ids in enumerate(replies.completion_ids):
            edits[k].forward_passes += max(1, len(ids))
            drop = named_steps(critic.decode(ids), len(lines[k]))
            if drop:
                kept.append((k, [line for i, line in enumerate(lines[k]) if i + 1 not in drop]))
        results = continue_and_verify(policy, task, [edits[k].problem for k, _ in kept],
                                      [prefix_text(prefix) for _, prefix in kept], max_new_tokens)
        for (k, _), result in zip(kept, results):
            edits[k].checks += 1
            edits[k].forward_passes += result.forward_passes
            shorter = (policy.count_tokens(reasoning_part(result.text))
                       < policy.count_tokens(reasoning_part(edits[k].before)))
            if result.correct and shorter:
                edits[k].after = result.text
        return edits
