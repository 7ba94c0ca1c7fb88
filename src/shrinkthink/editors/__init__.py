"""Editors rewrite verified winners into better training targets: a critic deletes steps that
do not matter, a paraphraser rewrites the steps in other words. Every edit is re-verified before
it is used: the policy, continuing greedily from the edited reasoning, must still reach the
right answer, so no edit becomes a training target unverified.

    from shrinkthink.editors import AblationCritic
    results = AblationCritic().edit(policy, task, [(problem, transcript)], max_new_tokens=64)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from shrinkthink.errors import UserError
from shrinkthink.policy import Policy
from shrinkthink.records import Problem
from shrinkthink.tasks.base import Task, reasoning_part


@dataclass
class Continuation:
    text: str  # the reasoning prefix followed by what the policy wrote after it
    correct: bool
    forward_passes: int


@dataclass
class Edit:
    """One winner before and after an editor. `after` is re-verified (or equal to `before` when
    no edit survived); `forward_passes` is what the checks cost."""

    problem: Problem
    before: str
    after: str
    forward_passes: int = 0
    checks: int = 0

    @property
    def changed(self) -> bool:
        return self.after != self.before


def reasoning_lines(text: str) -> list[str]:
    return [line for line in reasoning_part(text).split("\n") if line.strip()]


def prefix_text(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def continue_and_verify(policy: Policy, task: Task, problems: list[Problem], prefixes: list[str],
                        max_new_tokens: int) -> list[Continuation]:
    """Greedy continuations of each problem's prompt followed by a reasoning prefix, verified by
    the task. One batched call; a continuation costs one forward pass per token it writes."""
    if not problems:
        return []
    prompts = [policy.prompt_ids(p.prompt) + policy.tokenizer(prefix, add_special_tokens=False).input_ids
               for p, prefix in zip(problems, prefixes)]
    samples = policy.sample(prompts, max_new_tokens=max_new_tokens, greedy=True)
    out = []
    for problem, prefix, ids, finished in zip(problems, prefixes, samples.completion_ids, samples.finished):
        text = prefix + policy.decode(ids)
        out.append(Continuation(text, bool(finished) and task.score(problem, text) >= 1.0, max(1, len(ids))))
    return out


class Editor:
    name = ""

    def edit(self, policy: Policy, task: Task, items: list[tuple[Problem, str]], max_new_tokens: int) -> list[Edit]:
        raise NotImplementedError


def load_helper_model(path: str, field: str, device) -> Policy:
    """A critic's or paraphraser's own model (a local folder, a .gguf file or 'smollm2'); a path
    that does not load is a one-line error naming the config field. Loaded once per path and
    device: the checks before a run, the shrink stage, and a critic and paraphraser naming the same
    model share it (editors only read it)."""
    try:
        return _helper_model(path, str(device))
    except UserError as error:
        raise UserError(f"{field}: {str(error).removeprefix('model.path: ')}") from None
    except Exception as error:  # a folder that exists but holds no model
        raise UserError(f"{field}: cannot load model '{path}' ({type(error).__name__}: {error})") from None


@functools.lru_cache(maxsize=4)
def _helper_model(path: str, device: str) -> Policy:
    from shrinkthink.model import load_pretrained

    model, tokenizer = load_pretrained(path)
    return Policy(model.eval(), tokenizer, device)


def build_editors(configs: list, task: Task, device, field: str = "editors") -> list[Editor]:
    """Editors from their configs (config.py's `*Editor` models); `field` names the config list
    for error messages."""
    from shrinkthink.editors.critic import AblationCritic, LLMCritic
    from shrinkthink.editors.paraphrase import Paraphraser

    built: list[Editor] = []
    for i, c in enumerate(configs):
        where = f"{field}.{i}.model"
        if c.name == "ablation_critic":
            built.append(AblationCritic(spans=c.spans, max_checks=c.max_checks, mode=c.mode,
                                        max_surprise=c.max_surprise))
        elif c.name == "llm_critic":
            critic = None if c.model == "policy" else load_helper_model(c.model, where, device)
            built.append(LLMCritic(critic, c.max_new_tokens))
        elif c.name == "paraphrase":
            if c.model == "rules" and not task.has_paraphraser:
                raise UserError(f"{where}: task {task.name} has no rule-based paraphraser; name a model")
            model = None if c.model == "rules" else load_helper_model(c.model, where, device)
            built.append(Paraphraser(model, c.max_new_tokens, seed=c.seed))
        else:  # the config's discriminated union makes this unreachable
            raise UserError(f"{field}.{i}.name: editor '{c.name}' does not exist")
    return built
