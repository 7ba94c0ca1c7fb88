"""The run report: a short real run (warm start, explore, a shrink stage with a critic and a
paraphraser) ends by writing report.html; the page, and `compare`'s page of two runs, load in
headless Chromium with no console error, every plot decodes, and the transcript viewer shows
problems of every stage (screenshots kept, their paths printed). A run killed mid-stage, an
empty folder, a folder of garbage and a missing one get what can be written and one line saying
what is missing, never a traceback."""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from shrinkthink.cli import main
from shrinkthink.config import load_config
from shrinkthink.pipeline import run_pipeline
from shrinkthink.report import read_run, write_comparison, write_report
from shrinkthink.report.figures import frontier_figure, wilson_interval
from shrinkthink.report.page import deletion_diff, render_edit
from shrinkthink.rundir import RunDir

CONFIG = """\
name: report
seed: 0
threads: 1
model: {kind: tiny, depth: 2}
task: {name: arith, options: {max_operand: 3}, eval_levels: [1, 2], eval_problems: 4}
stages:
  - {name: warm, kind: warmstart, steps: 80, levels: [1, 2], batch_size: 32, lr: 0.01, digression_rate: 0.3,
     warmup_steps: 2, eval_every: 40, eval_problems: 4}
  - name: climb
    kind: explore
    steps: 2
    max_level: 2
    eval_every: 2
    eval_problems: 4
    learner: {group_size: 4, problems_per_step: 2}
    sampling: {max_new_tokens: 24}
  - name: tighten
    kind: shrink
    steps: 3
    eval_every: 3
    eval_problems: 4
    criteria: [{name: length_penalty}]
    editors: [{name: ablation_critic}, {name: paraphrase}]
    probe_problems: 0
    restore_best: false
    learner: {group_size: 4, problems_per_step: 2, scale_rewards: batch}
    sampling: {max_new_tokens: 24}
"""
STAGES = ["warm", "climb", "tighten"]
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)")

# Put at the top of a copy of the page: records every error (a script's, a resource that fails to
# load, console.error) and each image's decoded width into <body>, which --dump-dom prints.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || (e.target && e.target.src) || e)), true);
const original = console.error;
console.error = (...args) => { window.__errors.push(args.join(" ")); original.apply(console, args); };
window.addEventListener("load", () => {
  document.body.dataset.errors = JSON.stringify(window.__errors);
  document.body.dataset.images = JSON.stringify([...document.images].map(i => i.complete ? i.naturalWidth : 0));
});
</script>"""


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "report"
    summary = run_pipeline(load_config(_config_file(tmp_path_factory, CONFIG)), run_dir=str(run_dir), progress=False)
    assert summary["report"] == str(run_dir / "report.html")
    return run_dir


@pytest.fixture(scope="module")
def other_run(tmp_path_factory) -> Path:
    """A second, shorter run (no shrink stage), for `compare`, through the command: it ends by
    printing where its report is."""
    text = CONFIG.split("  - name: tighten")[0].replace("seed: 0", "seed: 1").replace("steps: 80", "steps: 20")
    run_dir = tmp_path_factory.mktemp("runs") / "other"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["run", str(_config_file(tmp_path_factory, text)), "--run-dir", str(run_dir), "--no-progress"]) == 0
    assert printed.getvalue().splitlines()[-1] == f"report: {run_dir / 'report.html'}"
    assert (run_dir / "report.html").is_file()
    return run_dir


def _config_file(tmp_path_factory, text: str) -> Path:
    path = tmp_path_factory.mktemp("config") / "report.yaml"
    path.write_text(text)
    return path


class Cells(HTMLParser):
    """The transcript viewer's filled cells, as (run, stage) pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "div" and "cell" in classes and "absent" not in classes:
            self.cells.append((attrs.get("data-run", ""), attrs.get("data-stage", "")))


def viewer_cells(page: str) -> list[tuple[str, str]]:
    parser = Cells()
    parser.feed(page)
    return parser.cells


def decoded_widths(page: str) -> list[int]:
    """Each embedded PNG decoded in full (a truncated one fails here, though a browser draws its
    top rows): the widths."""
    from PIL import Image

    widths = []
    for data in re.findall(r'src="data:image/png;base64,([^"]*)"', page):
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as image:
            image.load()
            widths.append(image.width)
    return widths


def render(page: Path, out: Path) -> tuple[list[str], list[int], str]:
    """Load `page` in headless Chromium: the errors it recorded, each image's decoded width, and
    the DOM after load. A screenshot of the page is kept beside `out`."""
    probed = out.with_suffix(".probed.html")
    probed.write_text(page.read_text().replace("<head>", "<head>\n" + PROBE, 1))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
             "--v=0", "--virtual-time-budget=5000"]
    loaded = subprocess.run([*flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    consoled = [line for line in loaded.stderr.splitlines() if ":CONSOLE" in line]
    body = re.search(r"<body[^>]*>", loaded.stdout).group(0)
    errors = json.loads(html.unescape(re.search(r'data-errors="([^"]*)"', body).group(1)))
    widths = json.loads(html.unescape(re.search(r'data-images="([^"]*)"', body).group(1)))
    shot = out.with_suffix(".png")
    subprocess.run([*flags, "--window-size=1400,3000", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot of {page.name}: {shot}")
    return errors + consoled, widths, loaded.stdout


def test_the_run_ends_by_writing_its_report(real_run: Path) -> None:
    page = (real_run / "report.html").read_text()
    for section in ("frontier", "curves", "levels", "transcripts", "edits", "config"):
        assert f'<section id="{section}">' in page
    # self-contained: every image inline, nothing else to fetch, no script
    assert not re.search(r'(?:src|href)="(?!data:)', page) and "<script" not in page
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', page)) >= 8
    # the stage table: a row a stage, with its figures
    for stage in STAGES:
        assert re.search(rf"<td>{stage}</td><td>\w+</td><td class=\"num\">[01]\.\d{{3}}</td>", page), stage
    # the same held-out problems after every stage
    records = {s: [json.loads(line) for line in (real_run / "samples" / f"{s}.jsonl").read_text().splitlines()]
               for s in STAGES}
    assert {s: [r["prompt"] for r in rs] for s, rs in records.items()} == {s: [r["prompt"] for r in records["warm"]]
                                                                           for s in STAGES}
    assert {"id", "level", "prompt", "answer", "completion", "score", "reasoning_tokens", "latent_steps"} <= \
        set(records["tighten"][0])
    assert {stage for _, stage in viewer_cells(page)} == set(STAGES)
    # the editors' examples: each a real edit, rendered as its editor shows it
    edits = [json.loads(line) for line in (real_run / "samples" / "tighten-edits.jsonl").read_text().splitlines()]
    assert edits and all(e["before"] != e["after"] for e in edits)
    assert {e["editor"] for e in edits} <= {"ablation_critic", "paraphrase"}
    if any(e["editor"] == "paraphrase" for e in edits):
        assert "paraphrase (re-verified)" in page
    if any(e["editor"] == "ablation_critic" for e in edits):
        assert "<del>" in page


@needs_chromium
def test_the_report_renders_in_chromium(real_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", str(real_run), "--out", str(tmp_path / "report.html")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"wrote {tmp_path / 'report.html'}" and err == ""
    errors, widths, dom = render(tmp_path / "report.html", tmp_path / "report")
    assert errors == []
    assert len(widths) >= 8 and all(w > 100 for w in widths), widths
    assert decoded_widths((tmp_path / "report.html").read_text()) == widths
    assert {stage for _, stage in viewer_cells(dom)} == set(STAGES)


@needs_chromium
def test_compare_renders_two_runs_in_chromium(real_run: Path, other_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "compare.html"
    assert main(["compare", str(real_run), str(other_run), "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""
    errors, widths, dom = render(out, tmp_path / "compare")
    assert errors == []
    assert len(widths) >= 8 and all(w > 100 for w in widths), widths
    assert decoded_widths(out.read_text()) == widths
    cells = set(viewer_cells(dom))
    assert {("report", s) for s in STAGES} | {("other", s) for s in ("warm", "climb")} <= cells
    # both runs in the one table, and in the legends of the shared plots
    assert "<td>report</td><td>tighten</td>" in dom and "<td>other</td><td>climb</td>" in dom


def killed_mid_stage(real_run: Path, into: Path) -> Path:
    """The run as it would be if killed during its shrink stage: no summary.json, no samples of
    that stage, metrics.jsonl ending in half a line of it (so the stage has no stage_end line)."""
    run_dir = into / "killed"
    shutil.copytree(real_run, run_dir, ignore=shutil.ignore_patterns("checkpoints", "report.html"))
    (run_dir / "summary.json").unlink()
    for path in (run_dir / "samples").glob("tighten*"):
        path.unlink()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    cut = next(i for i, line in enumerate(lines) if '"stage": "tighten"' in line and '"step": 2,' in line)
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:cut]) + "\n" + lines[cut][: len(lines[cut]) // 2])
    return run_dir


def test_a_run_killed_mid_stage_gets_what_it_wrote_and_one_line(real_run: Path, tmp_path: Path, capsys) -> None:
    run_dir = killed_mid_stage(real_run, tmp_path)
    assert main(["report", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"wrote {run_dir / 'report.html'}"
    assert len(err.strip().splitlines()) == 1
    for said in ("summary.json", "1 cut-off line of metrics.jsonl", "tighten (stopped at step 1)"):
        assert said in err, err
    page = (run_dir / "report.html").read_text()
    # the finished stages' figures come from their stage_end lines; the killed stage's steps are drawn
    assert "<td>warm</td>" in page and "<td>climb</td>" in page and "<td>tighten</td>" not in page
    assert {stage for _, stage in viewer_cells(page)} == {"warm", "climb"}
    run = read_run(run_dir)
    assert [r["step"] for r in run.steps if r["stage"] == "tighten"] == [1]

    out = tmp_path / "compare.html"
    assert main(["compare", str(real_run), str(run_dir), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "killed: missing" in err and out.is_file()


def test_a_missing_run_directory_is_one_line_not_a_traceback(real_run: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-such-run"
    assert main(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"shrinkthink: error: {missing}: no run directory; nothing to report\n"
    assert not missing.exists()
    assert main(["compare", str(missing), str(tmp_path / "neither"), "--out", str(tmp_path / "c.html")]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1 and not (tmp_path / "c.html").exists()
    # one missing among several: the others are compared
    assert main(["compare", str(real_run), str(missing), "--out", str(tmp_path / "c.html")]) == 0
    err = capsys.readouterr().err
    assert err == f"shrinkthink: {missing}: no run directory\n" and (tmp_path / "c.html").is_file()


def test_an_empty_or_garbled_run_directory_still_gets_a_page(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    written = write_report(empty)
    assert written.path.is_file() and "<h1>" in written.path.read_text()
    assert all(name in written.missing_line() for name in ("config.yaml", "metrics.jsonl", "summary.json"))

    garbled = tmp_path / "garbled"
    (garbled / "samples").mkdir(parents=True)
    (garbled / "config.yaml").write_text("stages: [1, {name: a}]\n: : :\n")
    (garbled / "summary.json").write_text('{"stages": "not a list", "start": [1]}')
    (garbled / "metrics.jsonl").write_text('[1, 2]\n{"stage": "a", "step": "x", "reward": "NaN"}\n'
                                           '{"stage": "a", "step": 1, "reward": NaN, "accuracy": true}\n{"stage": 3}\n')
    (garbled / "samples" / "a.jsonl").write_text('{"completion": 5}\nnot json\n')
    written = write_report(garbled)
    assert written.path.is_file() and "1 cut-off line" in written.missing_line()


def test_what_comes_from_a_run_is_escaped(tmp_path: Path) -> None:
    run_dir = tmp_path / "<b>run"
    (run_dir / "samples").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("stages: [{name: s, kind: explore}]\n")
    (run_dir / "summary.json").write_text(json.dumps({"stages": [
        {"name": "s", "kind": "explore", "accuracy": 0.5, "test_problems": 4, "mean_reasoning_tokens": 3.0,
         "accuracy_by_level": {"1": 0.5}, "latent_steps": 15}]}))
    (run_dir / "samples" / "s.jsonl").write_text(json.dumps(
        {"level": 1, "prompt": "<script>alert(1)</script>", "answer": "&", "completion": "</pre><img src=x>",
         "score": 1.0, "reasoning_tokens": 0, "latent_steps": 15}) + "\n")
    page = write_report(run_dir).path.read_text()
    assert "<script" not in page and "<img src=x>" not in page and "&lt;script&gt;alert(1)" in page
    assert "&lt;b&gt;run" in page and "<b>run" not in page
    assert "15 latent steps" in page  # the continuous thoughts, counted in the viewer


def test_latent_steps_are_drawn_beside_visible_tokens(tmp_path: Path) -> None:
    run = read_run(tmp_path)
    run.entries = [{"name": "shrink", "accuracy": 0.8, "mean_reasoning_tokens": 20.0, "latent_steps": 0},
                   {"name": "latent", "accuracy": 0.9, "mean_reasoning_tokens": 0.0, "latent_steps": 15}]
    figure = frontier_figure([run])
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert texts == ["shrink", "latent", "+15 latent steps"]
    hollow = [line for line in figure.axes[0].lines
              if line.get_markerfacecolor() == "white" and len(line.get_xdata())]
    assert [list(line.get_xdata()) for line in hollow] == [[15.0]]


def test_edits_are_shown_as_their_editor_made_them() -> None:
    struck = deletion_diff("1+2=3\ncheck 1+2=3\n3+4=7\nAnswer: 7", "1+2=3\n3+4=7\nAnswer: 7")
    assert struck == "<pre>1+2=3\n<del>check 1+2=3</del>\n3+4=7\nAnswer: 7</pre>"
    span = deletion_diff("1+2=3\nAnswer: 3", "3\nAnswer: 3")
    assert span == "<pre><del>1+2=3</del>\n<ins>3</ins>\nAnswer: 3</pre>"
    side = render_edit({"editor": "paraphrase", "before": "1+2=3", "after": "3=1+2", "prompt": "1+2=?"})
    assert re.search(r"original</b><pre>1\+2=3</pre>.*paraphrase \(re-verified\)</b><pre>3=1\+2</pre>", side)


def test_the_report_needs_no_torch_and_agrees_with_evaluate() -> None:
    from shrinkthink import evaluate

    for accuracy, n in ((0.0, 10), (0.5, 4), (0.93, 100), (1.0, 7), (0.3, 0)):
        assert wilson_interval(accuracy, n) == evaluate.wilson_interval(accuracy, n)
    loaded = subprocess.run([sys.executable, "-c", "import sys, shrinkthink.report, shrinkthink.cli; "
                             "print('torch' in sys.modules)"], capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip() == "False", loaded.stderr


def test_python_m_report_still_redraws_the_plots(real_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(real_run, run_dir, ignore=shutil.ignore_patterns("checkpoints", "plots", "report.html"))
    result = subprocess.run([sys.executable, "-m", "shrinkthink.report", str(run_dir)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["wrote", str(run_dir / "report.html"), str(run_dir / "plots" / "curves.png"),
                                     str(run_dir / "plots" / "accuracy_vs_tokens.png")]
    # a run without samples/<stage>.jsonl (written before them): the viewer reads the .txt
    for path in (run_dir / "samples").glob("*.jsonl"):
        path.unlink()
    assert set(read_run(run_dir).samples) == set(STAGES)
    assert {stage for _, stage in viewer_cells(write_comparison([run_dir], tmp_path / "c.html").path.read_text())} \
        == set(STAGES)


def test_a_few_edits_are_kept_spread_over_the_stage(tmp_path: Path) -> None:
    from shrinkthink.editors import Edit
    from shrinkthink.records import Problem

    run = RunDir(tmp_path)
    problem = Problem(id="p", prompt="1+2=?", answer="3")
    changed = [Edit(problem, f"a{i}\nAnswer: 3", "Answer: 3") for i in range(3)]
    same = [Edit(problem, "Answer: 3", "Answer: 3")]
    run.log_edits("shrink", "ablation_critic", same)  # call 1: nothing changed, nothing kept
    for _ in range(8):  # calls 2..9
        run.log_edits("shrink", "ablation_critic", same + changed)
    run.log_edits("shrink", "paraphrase", changed)
    rows = [json.loads(line) for line in (tmp_path / "samples" / "shrink-edits.jsonl").read_text().splitlines()]
    # the first call that changed anything, then the 4th and 8th; two a call, never an unchanged one
    assert [(r["editor"], r["call"]) for r in rows] == [("ablation_critic", c) for c in (2, 2, 4, 4, 8, 8)] + \
        [("paraphrase", 1), ("paraphrase", 1)]
    assert all(r["before"] != r["after"] for r in rows)
