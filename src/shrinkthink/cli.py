"""The `shrinkthink` command.

    shrinkthink run [CONFIG] [key=value ...]      # no CONFIG: the quickstart
    shrinkthink run --resume runs/<name>          # continue a run from its newest checkpoint
    shrinkthink run --procs 2                     # data-parallel ranks on this machine
    torchrun --nproc-per-node 8 -m shrinkthink run CONFIG   # the same ranks, started by torchrun
    shrinkthink eval CHECKPOINT --task arith --levels 1 2 3
    shrinkthink sample CHECKPOINT "12+7+30=?"
    shrinkthink tasks
    shrinkthink config [--defaults | --markdown]  # every config field; the quickstart resolved
    shrinkthink export CHECKPOINT OUT [--merge]   # a plain Hugging Face folder (LoRA merged)
    shrinkthink report RUN_DIR [--out FILE]       # one self-contained report.html: frontier, curves, transcripts
    shrinkthink compare RUN_A RUN_B ... [--out FILE]  # several runs on the same plots and table

Bad input (a config field, a task name, a data file line, a model path) is one line on stderr and
exit status 2; ranks that cannot meet are one line with exit status 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from shrinkthink import allocator
from shrinkthink.errors import SetupError, UserError

EXIT_USER_ERROR = 2
# `--debug` is accepted after the command too; SUPPRESS keeps a command's unset default from
# overwriting `shrinkthink --debug <command>` (argparse copies subparser defaults over the parent's)
SUB_DEBUG = dict(action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shrinkthink", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a curriculum from a YAML config (default: the quickstart)")
    run.add_argument("args", nargs="*", metavar="[CONFIG] [key=value]",
                     help="a YAML config, then overrides such as stages.1.steps=50 (fields: src/shrinkthink/config.py)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    run.add_argument("--run-dir", help="where to write the run (default: runs/<name>-<time>)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--procs", type=_positive, metavar="N",
                     help="data-parallel ranks to start on this machine (torch.distributed: gloo on CPU, "
                          "NCCL on GPUs, a GPU a rank; default: the config's `procs`); under torchrun leave it out")
    run.add_argument("--debug", **SUB_DEBUG)

    evaluate = commands.add_parser("eval", help="held-out greedy accuracy of a checkpoint on a task")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--task", required=True, help="task name (see `shrinkthink tasks`)")
    evaluate.add_argument("--options", default="{}", help="task options as YAML/JSON, e.g. '{max_operand: 20}'")
    evaluate.add_argument("--levels", type=int, nargs="+", default=[1])
    evaluate.add_argument("--n", type=int, default=100, help="held-out problems per level")
    evaluate.add_argument("--pass-k", type=int, default=0, help="also report pass@k by sampling k attempts")
    evaluate.add_argument("--max-new-tokens", type=int, default=128)
    evaluate.add_argument("--debug", **SUB_DEBUG)

    sample = commands.add_parser("sample", help="answer one question with a checkpoint")
    sample.add_argument("checkpoint")
    sample.add_argument("question")
    sample.add_argument("--max-new-tokens", type=int, default=128)
    sample.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    sample.add_argument("--debug", **SUB_DEBUG)

    tasks = commands.add_parser("tasks", help="list the tasks, a line each")
    tasks.add_argument("--debug", **SUB_DEBUG)

    reference = commands.add_parser("config", help="every config field: its type, default and description")
    shown = reference.add_mutually_exclusive_group()
    shown.add_argument("--defaults", action="store_true",
                       help="print the quickstart config with every default filled in, as YAML")
    shown.add_argument("--markdown", action="store_true", help="the reference as Markdown (docs/config.md)")
    reference.add_argument("--debug", **SUB_DEBUG)

    from shrinkthink import export as exporting  # stdlib only at import: its docstring is the help

    export = commands.add_parser("export", help="write a checkpoint as a plain Hugging Face folder (LoRA: --merge)",
                                 description=exporting.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    export.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a checkpoint folder, e.g. runs/<run>/checkpoints/<stage>")
    export.add_argument("out", metavar="OUT", help="the folder to write: new, or empty")
    export.add_argument("--merge", action="store_true",
                        help="fold a LoRA checkpoint's adapter into the weights (peft's merge_and_unload)")
    export.add_argument("--debug", **SUB_DEBUG)

    report = commands.add_parser("report", help="write a run's report.html: the accuracy-versus-tokens frontier, "
                                 "curves over steps, per-level accuracy, held-out transcripts of every stage")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (finished or not)")
    report.add_argument("--out", metavar="FILE", help="where to write it (default: RUN_DIR/report.html)")
    report.add_argument("--debug", **SUB_DEBUG)

    compare = commands.add_parser("compare", help="several runs on the same plots and table, as one HTML page")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    compare.add_argument("--out", metavar="FILE", default="compare.html", help="where to write it (default: "
                         "compare.html)")
    compare.add_argument("--debug", **SUB_DEBUG)
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _run(args) -> None:
    from shrinkthink.config import load_config

    # the config is validated before torch and transformers are imported: a bad field is
    # reported at once, not after seconds of imports
    if args.resume:
        config_path = os.path.join(args.resume, "config.yaml")
        if not os.path.isfile(config_path):
            raise UserError(f"--resume: no run in '{args.resume}' (config.yaml missing)")
        config = load_config(config_path, args.args)
    else:
        config_path = None
        overrides = list(args.args)
        if overrides and "=" not in overrides[0]:
            config_path = overrides.pop(0)
        config = load_config(config_path, overrides)
    if args.relaunch:  # again as typed, with the config's allocator preloaded (ranks inherit it)
        allocator.relaunch(config.allocator)
    procs = args.procs or config.procs
    if procs > 1 and "WORLD_SIZE" not in os.environ:
        _spawn_ranks(args, procs)
        return
    from shrinkthink import distributed
    from shrinkthink.pipeline import format_table, run_pipeline

    try:
        summary = run_pipeline(config, run_dir=args.resume or args.run_dir, resume=bool(args.resume),
                               progress=not args.no_progress)
        if distributed.is_main():
            print(format_table(summary))
            if summary.get("report"):
                print(f"report: {summary['report']}")
    finally:
        distributed.teardown()


def _spawn_ranks(args, procs: int) -> None:
    """`--procs N` (or the config's `procs: N`): N ranks of this command on this machine, as
    torchrun would start them (the config is already checked, so a bad field never reaches them).
    A rank that fails ends the others; its exit status is this command's."""
    import logging
    import socket

    import torch.multiprocessing as mp

    # its "Terminating process ..." when one rank fails would be a second line beside the error
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)

    with socket.socket() as probe:  # a free port for the ranks to meet on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        mp.start_processes(_rank, args=(args, procs, port), nprocs=procs, start_method="spawn")
    except mp.ProcessExitedException as error:
        raise RankExit(error.exit_code or 1, f"rank {error.error_index} exited with status {error.exit_code}") from None
    except mp.ProcessRaisedException as error:
        # the first rank to fail, its traceback as text; its last line names the exception
        last = str(error).strip().splitlines()[-1]
        kind, _, message = last.partition(": ")
        if kind.endswith("UserError"):
            raise UserError(message) from None
        if args.debug:
            raise
        if kind.endswith("SetupError"):  # its message names the rank
            raise RankExit(1, message) from None
        raise RankExit(1, f"rank {error.error_index}: {last}") from None


def _rank(index: int, args, procs: int, port: int) -> None:
    """One rank of `--procs`. Its exceptions go back to the command that started it, which
    reports the first (a bad input as one line, whichever rank found it first)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(index), LOCAL_RANK=str(index),
                      WORLD_SIZE=str(procs), LOCAL_WORLD_SIZE=str(procs))
    args.relaunch = False  # it has the allocator the command chose; its own command line is spawn's
    _run(args)


def _checkpoint(path: str):
    from shrinkthink.policy import Policy, pick_device

    if not os.path.exists(path):
        raise UserError(f"checkpoint: no such file or folder '{path}'")
    return Policy.load(path, pick_device("auto"))


def _eval(args) -> None:
    import yaml

    from shrinkthink.evaluate import evaluate
    from shrinkthink.tasks import make_task

    try:
        options = yaml.safe_load(args.options) or {}
    except yaml.YAMLError:
        raise UserError(f"--options: not YAML/JSON: {args.options!r}") from None
    if not isinstance(options, dict):
        raise UserError("--options: expected a mapping, e.g. '{max_operand: 20}'")
    task = make_task(args.task, options)
    for level in args.levels:
        task.check_level(level)
    policy = _checkpoint(args.checkpoint)
    result = evaluate(policy, task, args.levels, args.n, max_new_tokens=args.max_new_tokens, pass_k=args.pass_k)
    print(json.dumps({
        "accuracy": result.accuracy,
        "accuracy_by_level": result.accuracy_by_level,
        "pass_at_k": result.pass_at_k,
        "mean_reasoning_tokens": result.mean_reasoning_tokens,
        "mean_completion_tokens": result.mean_completion_tokens,
        "truncated_share": result.truncated_share,
        "digression_share": result.digression_share,
    }, indent=2))


def _sample(args) -> None:
    policy = _checkpoint(args.checkpoint)
    greedy = args.temperature <= 0
    samples = policy.sample([policy.prompt_ids(args.question)], max_new_tokens=args.max_new_tokens,
                            greedy=greedy, temperature=args.temperature if not greedy else 1.0)
    print(policy.decode(samples.completion_ids[0]))


def _config(args) -> None:
    from shrinkthink.config import dump_config, load_config
    from shrinkthink.reference import config_reference

    print(dump_config(load_config()) if args.defaults else config_reference(markdown=args.markdown), end="")


def _export(args) -> None:
    from shrinkthink.export import coconut_note, export_checkpoint

    if not os.path.exists(args.checkpoint):
        raise UserError(f"checkpoint: no such file or folder '{args.checkpoint}'")
    exported = export_checkpoint(args.checkpoint, args.out, merge=args.merge)
    print(f"wrote {exported.path}" + (" (LoRA adapter merged into the weights)" if exported.merged else ""))
    if exported.coconut:
        print(f"shrinkthink: {coconut_note(exported)}", file=sys.stderr)


def _report(args) -> None:
    from shrinkthink.report import write_report

    _say(lambda: write_report(args.run_dir, args.out))


def _compare(args) -> None:
    from shrinkthink.report import write_comparison

    _say(lambda: write_comparison(args.run_dirs, args.out))


def _say(write) -> None:
    """Write a report; say where it went, and in one line (on stderr) what it lacks."""
    try:
        written = write()
    except OSError as error:  # a file the report cannot read, or an --out it cannot write
        raise UserError(f"{error.filename or 'report'}: {error.strerror or error}") from None
    if written.path is None:
        raise UserError(f"{written.missing_line()}; nothing to report")
    print(f"wrote {written.path}")
    if written.missing:
        print(f"shrinkthink: {written.missing_line()}", file=sys.stderr)


def _tasks(args) -> None:
    from shrinkthink.tasks import list_tasks

    for name, description in list_tasks():
        print(f"{name:32s} {description}")


class RankExit(Exception):
    """A rank started by `--procs` failed: the command exits with `code`, saying `message`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _first_rank() -> bool:
    """Whether this process speaks for the run: ranks other than 0 would repeat its message."""
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    # offline mode stays the user's choice (HF_HUB_OFFLINE=1): a hub id in model.path may need a download
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling `run`'s positionals at the first option: overrides after
    # `--run-dir X` (`shrinkthink run cfg.yaml --run-dir out seed=1`) are still overrides
    if args.command == "run":
        args.args += [a for a in extra if not a.startswith("-")]
        extra = [a for a in extra if a.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.relaunch = argv is None  # the command itself, not main([...]) inside another program
    return _handle(args)


def _handle(args) -> int:
    handlers = {"run": _run, "eval": _eval, "sample": _sample, "tasks": _tasks, "config": _config, "export": _export,
                "report": _report, "compare": _compare}
    try:
        handlers[args.command](args)
    except UserError as error:
        if args.debug:
            raise
        if _first_rank():
            print(f"shrinkthink: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RankExit as error:
        print(f"shrinkthink: error: {error}", file=sys.stderr)
        return error.code
    except SetupError as error:  # under torchrun: each rank that fails says it
        if args.debug:
            raise
        print(f"shrinkthink: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `shrinkthink tasks | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        if _first_rank():
            print("shrinkthink: interrupted; resume with `shrinkthink run --resume RUN_DIR`", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
