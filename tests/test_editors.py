"""Editors on scripted policies whose continuations are known: the ablation critic removes the
digressions of a transcript and keeps its necessary steps; an edit that breaks the answer is
rejected; paraphrases are re-verified; the steganography probe sees a policy that depends on its
own spelling."""

from __future__ import annotations

import random
import re
from types import SimpleNamespace

from shrinkthink.editors.critic import AblationCritic, LLMCritic, named_steps
from shrinkthink.editors.paraphrase import Paraphraser, steganography_probe
from shrinkthink.rollout import Samples
from shrinkthink.tasks import make_task

TASK = make_task("arith", {"max_operand": 20, "min_operand": 1})


class ScriptedPolicy:
    """Characters as tokens; `continue_text(prompt, prefix)` decides what it writes."""

    def __init__(self, continue_text) -> None:
        self.continue_text = continue_text
        self.tokenizer = lambda text, add_special_tokens=False: SimpleNamespace(input_ids=[ord(c) for c in text])

    def prompt_ids(self, prompt: str) -> list[int]:
        return [ord(c) for c in prompt + "\n"]

    def sample(self, prompts, *, max_new_tokens, greedy=False, **_) -> Samples:
        outs = []
        for ids in prompts:
            prompt, _, prefix = "".join(map(chr, ids)).partition("\n")
            outs.append([ord(c) for c in self.continue_text(prompt, prefix)][:max_new_tokens])
        return Samples(outs, [[0.0] * len(o) for o in outs], [True] * len(outs), 0.0, sum(map(len, outs)))

    def decode(self, ids) -> str:
        return "".join(map(chr, ids))

    def logprobs(self, prompts, completions) -> list[list[float]]:
        """A line is predictable (log p 0 a token) when the number it builds on, a step's left
        operand or the answer, is already in the reasoning before it (or, for a first step, the
        question's first term); otherwise -5 a token."""
        out = []
        for prompt_ids, ids in zip(prompts, completions):
            question, _, prefix = "".join(map(chr, prompt_ids)).partition("\n")
            line = "".join(map(chr, ids))
            known = set(re.findall(r"\d+", prefix)) | {re.findall(r"\d+", question)[0]}
            out.append([0.0 if re.findall(r"\d+", line)[0] in known else -5.0] * len(ids))
        return out

    def count_tokens(self, text: str) -> int:
        return len(text)


PROBLEMS = {}


def problem_for(prompt: str):
    return PROBLEMS[prompt]


def solver(prompt: str, prefix: str) -> str:
    """Writes the gold steps not yet written (in any spelling the task accepts), then the answer:
    a policy that can go on from wherever the reasoning stands."""
    problem = problem_for(prompt)
    done = sum(necessary for _, necessary in TASK.classify_steps(problem, prefix))
    return "".join(step + "\n" for step in problem.steps[done:]) + "Answer: " + problem.answer


def lazy(prompt: str, prefix: str) -> str:
    """Answers with the last number of the reasoning: right only if the reasoning got there."""
    numbers = re.findall(r"\d+", prefix)
    return "Answer: " + (numbers[-1] if numbers else "0")


def setup_problem(level: int = 3, seed: int = 0):
    problem = TASK.generate(level, random.Random(seed))
    PROBLEMS[problem.prompt] = problem
    return problem


def test_ablation_critic_removes_digressions_and_keeps_necessary_steps() -> None:
    problem = setup_problem()
    s = problem.steps
    digressive = "\n".join([s[0], "hmm", s[0], s[1], "check " + s[0], "3+4=7", *s[2:], "so far so good"])
    transcript = digressive + "\nAnswer: " + problem.answer
    [edit] = AblationCritic(spans=False).edit(ScriptedPolicy(solver), TASK, [(problem, transcript)], 64)
    assert edit.after == "\n".join(s) + "\nAnswer: " + problem.answer
    assert all(necessary for _, necessary in TASK.classify_steps(problem, edit.after))
    assert edit.checks >= len(s) and edit.forward_passes > edit.checks


def test_keep_rest_critic_removes_a_re_check_habit_and_keeps_the_steps() -> None:
    """The regenerating critic cannot remove a habit the policy writes again; deleting one line at
    a time from the end, with the next line's likelihood as the guard, removes every re-check and
    keeps every step a later line builds on."""
    problem = setup_problem(level=3, seed=4)
    habit = "\n".join(line for step in problem.steps for line in (step, "check " + step))
    transcript = habit + "\nAnswer: " + problem.answer

    def habitual(prompt: str, prefix: str) -> str:  # rewrites the habit from any prefix
        return "" if prefix.endswith("Answer: ") else transcript[len(prefix):]

    [edit] = AblationCritic(spans=False).edit(ScriptedPolicy(habitual), TASK, [(problem, transcript)], 64)
    assert edit.after == transcript  # regenerate mode: the habit comes back
    # after `Answer: `, answers with the last number written: right only while the last step is there
    last_number = ScriptedPolicy(lambda prompt, prefix: re.findall(r"\d+", prefix)[-1])
    [edit] = AblationCritic(mode="keep_rest").edit(last_number, TASK, [(problem, transcript)], 64)
    assert edit.after == "\n".join(problem.steps) + "\nAnswer: " + problem.answer
    assert edit.checks == 2 * len(problem.steps) and edit.forward_passes > edit.checks


def test_ablation_critic_spans_keep_only_each_steps_result() -> None:
    problem = setup_problem(seed=1)
    transcript = "\n".join(problem.steps) + "\nAnswer: " + problem.answer
    [edit] = AblationCritic(spans=True).edit(ScriptedPolicy(solver), TASK, [(problem, transcript)], 64)
    # the solver goes on from a bare running value, so each derivation `a+b=` can go
    values = [step.split("=")[1] for step in problem.steps]
    assert edit.after.split("\n")[:-1] == values[: len(edit.after.split("\n")) - 1]
    assert len(edit.after) < len(transcript)
    assert all(necessary for _, necessary in TASK.classify_steps(problem, edit.after))


def test_an_edit_that_breaks_the_answer_is_rejected() -> None:
    problem = setup_problem(level=2, seed=2)
    transcript = "\n".join([problem.steps[0], "hmm", problem.steps[1]]) + "\nAnswer: " + problem.answer
    names_last_step = ScriptedPolicy(lambda prompt, prefix: "3")
    [edit] = LLMCritic(names_last_step).edit(ScriptedPolicy(lazy), TASK, [(problem, transcript)], 64)
    assert edit.checks == 1 and edit.after == edit.before  # the lazy policy answers wrong without it
    names_filler = ScriptedPolicy(lambda prompt, prefix: "2")
    [edit] = LLMCritic(names_filler).edit(ScriptedPolicy(lazy), TASK, [(problem, transcript)], 64)
    assert edit.after == "\n".join(problem.steps) + "\nAnswer: " + problem.answer


def test_critic_reply_parsing_keeps_existing_step_numbers() -> None:
    assert named_steps("steps 2, 5 and 9", 5) == {2, 5}
    assert named_steps("none", 5) == set()


def test_paraphrase_is_re_verified_and_the_probe_sees_steganography() -> None:
    problems = [setup_problem(level=3, seed=s) for s in range(4)]
    items = [(p, "\n".join(p.steps) + "\nAnswer: " + p.answer) for p in problems]
    edits = Paraphraser(None, seed=0).edit(ScriptedPolicy(solver), TASK, items, 64)
    assert all(e.changed for e in edits)
    for edit in edits:
        assert TASK.score(edit.problem, edit.after) == 1.0
        assert all(necessary for _, necessary in TASK.classify_steps(edit.problem, edit.after))
    honest = steganography_probe(ScriptedPolicy(solver), TASK, Paraphraser(None, seed=0), items, 64)
    assert honest["probe_gap"] == 0.0
    # the lazy policy reads the last number: `49=19+30` hides the result where it does not look
    spelling = steganography_probe(ScriptedPolicy(lazy), TASK, Paraphraser(None, seed=0), items, 64)
    assert spelling["probe_own_accuracy"] == 1.0 and spelling["probe_gap"] > 0.0


def test_a_helper_model_is_loaded_once_per_path(tmp_path) -> None:
    """The run's checks and the shrink stage both build the editors; a critic and a paraphraser
    naming the same folder share one loaded model."""
    from shrinkthink.config import LLMCriticEditor, ParaphraseEditor
    from shrinkthink.editors import build_editors
    from shrinkthink.model import tiny_policy

    model, tokenizer = tiny_policy(depth=1, seed=0)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    configs = [LLMCriticEditor(name="llm_critic", model=str(tmp_path)),
               ParaphraseEditor(name="paraphrase", model=str(tmp_path))]
    critic, paraphraser = build_editors(configs, TASK, "cpu")
    again, _ = build_editors(configs, TASK, "cpu")
    assert critic.critic is paraphraser.model is again.critic
    other = tmp_path / "other"
    model.save_pretrained(other, safe_serialization=True)
    tokenizer.save_pretrained(other)
    assert build_editors([LLMCriticEditor(name="llm_critic", model=str(other))], TASK, "cpu")[0].critic is not critic
