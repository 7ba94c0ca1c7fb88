"""The report as one self-contained HTML page: figures embedded as base64 PNGs, plain HTML and CSS
(a transcript a <details>), no script and nothing fetched. Everything that comes from a run is
escaped. A section that cannot be drawn says so in its place; the page is still written."""

from __future__ import annotations

import base64
import difflib
import html
from collections.abc import Callable

from shrinkthink.report.figures import curve_figures, frontier_figure, level_figure, number, to_png, wilson_interval
from shrinkthink.report.runs import Run

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1500px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; } h3 { margin-bottom: .3em; }
.missing { background: #fff4e0; border-left: 4px solid #e90; padding: .4em .8em; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 1em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 13px; } th, td { border: 1px solid #ddd; padding: .25em .5em; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
details.problem { border: 1px solid #ddd; border-radius: 4px; margin: .4em 0; padding: .3em .6em; }
details.problem > summary { cursor: pointer; }
.stages { display: grid; gap: .5em; overflow-x: auto; margin: .4em 0; }
.cell { border: 1px solid #ddd; border-radius: 3px; padding: .3em; min-width: 14em; }
.cell.right { border-top: 3px solid #2a2; } .cell.wrong { border-top: 3px solid #c33; }
.cell.absent { color: #888; font-style: italic; }
.cell .head { font-size: 12px; color: #555; margin-bottom: .2em; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font: 12px/1.4 ui-monospace, monospace; }
del { color: #b00; background: #fdd; } ins { color: #060; background: #dfd; text-decoration: none; }
.side { display: grid; grid-template-columns: 1fr 1fr; gap: .5em; }
.edit { border: 1px solid #ddd; border-radius: 4px; padding: .4em .6em; margin: .5em 0; }
.note { color: #555; font-size: 13px; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def image(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def fmt(value, digits: int = 3) -> str:
    value = number(value)
    return "-" if value is None else f"{value:.{digits}f}"


def guarded(title: str, draw: Callable[[], str], missing: list[str]) -> str:
    """A section, or a line in its place saying why it could not be drawn."""
    try:
        return draw()
    except Exception as error:  # a malformed figure costs its section, never the page
        missing.append(f"the {title} ({type(error).__name__}: {error})")
        return f'<p class="missing">The {esc(title)} could not be drawn: {esc(type(error).__name__)}: {esc(error)}</p>'


def page(title: str, runs: list[Run], notes: list[str]) -> tuple[str, list[str]]:
    """The HTML of a report on `runs` (one: `report`; several: `compare`), and what it could not
    draw (beside `notes`, what was missing before drawing)."""
    missing: list[str] = []
    sections = [
        guarded("frontier", lambda: frontier_section(runs), missing),
        guarded("curves", lambda: curves_section(runs), missing),
        guarded("per-level accuracy", lambda: levels_section(runs), missing),
        guarded("transcript viewer", lambda: transcripts_section(runs), missing),
        guarded("edits", lambda: edits_section(runs), missing),
        guarded("configs", lambda: config_section(runs), missing),
    ]
    shown = [*notes, *missing]
    warning = ('<p class="missing">Missing: ' + "<br>".join(esc(n) for n in shown) + "</p>") if shown else ""
    body = "\n".join(sections)
    text = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{esc(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p class="note">{' · '.join(esc(run.path) for run in runs)}</p>
{warning}
{body}
</body>
</html>
"""
    return text, missing


def frontier_section(runs: list[Run]) -> str:
    figure = frontier_figure(runs)
    drawn = image(to_png(figure), "accuracy versus reasoning tokens") if figure else \
        '<p class="note">No stage has finished yet: no point to draw.</p>'
    return f"""<section id="frontier">
<h2>Accuracy versus reasoning tokens</h2>
<p class="note">One point a stage (test problems, greedy), in curriculum order, with its 95% Wilson interval.
Latent steps (continuous thoughts) are not visible tokens: a stage that uses them has a hollow point beside
its own, at visible tokens plus latent steps.</p>
{drawn}
{stage_table(runs)}
</section>"""


def stage_table(runs: list[Run]) -> str:
    several = len(runs) > 1
    head = (["run"] if several else []) + ["stage", "kind", "test accuracy", "95% interval", "by level",
                                           "reasoning tokens", "latent steps", "completion tokens", "digression",
                                           "valid steps", "truncated", "transfer", "steps", "seconds"]
    rows = []
    for run in runs:
        for e in run.entries:
            accuracy, n = number(e.get("accuracy")), int(number(e.get("test_problems")) or 0)
            interval = "-" if accuracy is None or not n else "{:.3f}-{:.3f}".format(*wilson_interval(accuracy, n))
            by_level = e.get("accuracy_by_level") if isinstance(e.get("accuracy_by_level"), dict) else {}
            transfer = e.get("transfer") if isinstance(e.get("transfer"), dict) else {}
            cells = [esc(e.get("name", "?")), esc(e.get("kind", "")), fmt(accuracy), interval,
                     " ".join(f"{esc(k)}:{fmt(v, 2)}" for k, v in by_level.items()),
                     fmt(e.get("mean_reasoning_tokens"), 1), fmt(e.get("latent_steps"), 0),
                     fmt(e.get("mean_completion_tokens"), 1), fmt(e.get("digression_share"), 2),
                     fmt(e.get("valid_step_share"), 2), fmt(e.get("truncated_share"), 2),
                     " ".join(f"{esc(k)}:{fmt(v.get('accuracy') if isinstance(v, dict) else None, 2)}"
                              for k, v in transfer.items()) or "-",
                     fmt(e.get("steps"), 0), fmt(e.get("seconds"), 0)]
            if several:
                cells.insert(0, esc(run.label))
            rows.append("<tr>" + "".join(f'<td class="num">{c}</td>' if c[:1].isdigit() or c == "-"
                                         else f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>\n"
            + "\n".join(rows) + "\n</tbody></table>")


def curves_section(runs: list[Run]) -> str:
    figures = curve_figures(runs)
    drawn = "\n".join(image(to_png(figure), title) for title, figure in figures) or \
        '<p class="note">No training step was logged.</p>'
    return f"""<section id="curves">
<h2>Curves over steps</h2>
<p class="note">Every step's metrics line (metrics.jsonl), all stages on one axis; a vertical line where a stage
begins.</p>
<div class="figures">
{drawn}
</div>
</section>"""


def levels_section(runs: list[Run]) -> str:
    figure = level_figure(runs)
    if figure is None:
        return ""
    return f"""<section id="levels">
<h2>Accuracy per level</h2>
{image(to_png(figure), "test accuracy per level after each stage")}
</section>"""


def problem_key(sample: dict) -> str:
    """Level and prompt, which samples/<stage>.txt has too (ids are in the .jsonl only)."""
    return f"{sample.get('level')}:{sample.get('prompt')}"


def transcripts_section(runs: list[Run]) -> str:
    """The same held-out problems at the end of each stage, side by side: a problem a <details>,
    a run a row, a stage a column."""
    problems: dict[str, dict] = {}
    for run in runs:
        for samples in run.samples.values():
            for sample in samples:
                problems.setdefault(problem_key(sample), sample)
    if not problems:
        return '<section id="transcripts"><h2>Held-out transcripts</h2><p class="note">None recorded.</p></section>'
    order = sorted(problems, key=lambda k: number(problems[k].get("level")) or 0)
    blocks, opened = [], set()
    for key in order:
        problem = problems[key]
        level = problem.get("level")
        rows = []
        solved = total = 0
        for run in runs:
            stages = [name for name in run.stage_names if name in run.samples]
            if not stages:
                continue
            cells = []
            for stage in stages:
                sample = next((s for s in run.samples[stage] if problem_key(s) == key), None)
                if sample is None:
                    cells.append(f'<div class="cell absent" data-stage="{esc(stage)}">{esc(stage)}: not shown</div>')
                    continue
                score = number(sample.get("score")) or 0.0
                solved, total = solved + (score >= 1.0), total + 1
                facts = [f"score {score:g}"]
                if number(sample.get("reasoning_tokens")) is not None:
                    facts.append(f"{sample['reasoning_tokens']:g} reasoning tokens")
                if (number(sample.get("latent_steps")) or 0) > 0:
                    facts.append(f"{sample['latent_steps']:g} latent steps")
                cells.append(f'<div class="cell {"right" if score >= 1.0 else "wrong"}" data-run="{esc(run.label)}" '
                             f'data-stage="{esc(stage)}"><div class="head"><b>{esc(stage)}</b> · '
                             f'{esc(" · ".join(facts))}</div><pre>{esc(sample.get("completion", ""))}</pre></div>')
            heading = f"<h4>{esc(run.label)}</h4>" if len(runs) > 1 else ""
            rows.append(f'{heading}<div class="stages" style="grid-template-columns: repeat({len(stages)}, '
                        f'minmax(14em, 1fr))">{"".join(cells)}</div>')
        first_of_level = level not in opened
        opened.add(level)
        first_line = (str(problem.get("prompt") or "").splitlines() or [""])[0][:120]
        summary = (f"level {esc(level)} · <code>{esc(first_line)}</code> · answer "
                   f"<code>{esc(problem.get('answer', ''))}</code> · right after {solved} of {total} stages")
        blocks.append(f'<details class="problem"{" open" if first_of_level else ""}><summary>{summary}</summary>'
                      f'<pre class="prompt">{esc(problem.get("prompt", ""))}</pre>{"".join(rows)}</details>')
    return f"""<section id="transcripts">
<h2>Held-out transcripts</h2>
<p class="note">The same test problems, greedy, at the end of each stage (samples/&lt;stage&gt;.jsonl); green: right,
red: wrong. Latent steps are counted, not shown: a continuous thought has no text.</p>
{"".join(blocks)}
</section>"""


def deletion_diff(before: str, after: str) -> str:
    """`before`'s lines with those the edit removed struck through and what it wrote instead
    inserted after them."""
    old, new = before.split("\n"), after.split("\n")
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if op == "equal":
            out += [esc(line) for line in old[i1:i2]]
            continue
        out += [f"<del>{esc(line)}</del>" for line in old[i1:i2]]
        out += [f"<ins>{esc(line)}</ins>" for line in new[j1:j2]]
    return "<pre>" + "\n".join(out) + "</pre>"


def render_edit(edit: dict) -> str:
    editor = str(edit.get("editor", "?"))
    before, after = str(edit.get("before", "")), str(edit.get("after", ""))
    head = (f'<div class="head"><b>{esc(editor)}</b> · level {esc(edit.get("level", "?"))} · '
            f'<code>{esc(edit.get("prompt", ""))}</code> · answer <code>{esc(edit.get("answer", ""))}</code></div>')
    if "paraphrase" in editor:
        body = (f'<div class="side"><div><b>original</b><pre>{esc(before)}</pre></div>'
                f'<div><b>paraphrase (re-verified)</b><pre>{esc(after)}</pre></div></div>')
    else:
        body = deletion_diff(before, after)
    return f'<div class="edit" data-editor="{esc(editor)}">{head}{body}</div>'


def edits_section(runs: list[Run]) -> str:
    parts = []
    for run in runs:
        for stage, edits in run.edits.items():
            if edits:
                where = f"{run.label}: {stage}" if len(runs) > 1 else stage
                parts.append(f"<h3>{esc(where)}</h3>" + "\n".join(render_edit(e) for e in edits))
    if not parts:
        return ""
    return f"""<section id="edits">
<h2>Editors' edits of the winners</h2>
<p class="note">A few winners the shrink stages' editors rewrote before fine-tuning on them
(samples/&lt;stage&gt;-edits.jsonl): a critic's deletions struck through, with what the policy wrote again in their
place beneath them; a paraphrase beside its original.</p>
{"".join(parts)}
</section>"""


def config_section(runs: list[Run]) -> str:
    parts = [f"<details><summary>{esc(run.label)}: config.yaml</summary><pre>{esc(run.config_text)}</pre></details>"
             for run in runs if run.config_text]
    return f'<section id="config"><h2>Config</h2>{"".join(parts)}</section>' if parts else ""
