"""The config reference: every field of every model in config.py, with its type, default and
description, as `shrinkthink config` prints it and docs/config.md holds it (a test keeps the two
the same).

    python -m shrinkthink config --markdown > docs/config.md
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel

from shrinkthink.config import RunConfig

REFERENCE_COMMAND = "python -m shrinkthink config --markdown > docs/config.md"


def config_models(root: type[BaseModel] = RunConfig) -> list[tuple[type[BaseModel], list[str]]]:
    """Every model reachable from `root`, in the order its fields meet them, with the YAML paths
    that reach it (`stages[].learner`). Walked from the annotations, so a model or field added
    later is in the reference without anyone listing it."""
    found: dict[type[BaseModel], list[str]] = {}

    def visit(model: type[BaseModel], path: str) -> None:
        if model in found:
            if path not in found[model]:
                found[model].append(path)
            return
        found[model] = [path]
        for name, field in model.model_fields.items():
            for nested, where in _models_in(field.annotation, f"{path}.{name}" if path else name):
                visit(nested, where)

    visit(root, "")
    return list(found.items())


def _models_in(annotation: Any, path: str):
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, path
    elif origin is Annotated:
        yield from _models_in(args[0], path)
    elif origin in (Union, types.UnionType):
        for arg in args:
            yield from _models_in(arg, path)
    elif origin in (list, tuple, set, dict) and args:
        yield from _models_in(args[-1], f"{path}[]")


def _type_text(annotation: Any) -> str:
    import json
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is Annotated:
        return _type_text(args[0])
    if origin is Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_text(arg) for arg in args)
    if origin in (list, tuple, set, dict):
        return f"{origin.__name__}[{', '.join(_type_text(arg) for arg in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(field) -> str:
    import json

    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):  # a nested model: its own section lists its defaults
        return f"{type(value).__name__} defaults"
    return json.dumps(value)


def _tag(model: type[BaseModel]) -> str | None:
    """`kind: warmstart` for a member of a tagged union: its required single-value Literal field."""
    import typing

    for name, field in model.model_fields.items():
        literal = typing.get_origin(field.annotation) is Literal and len(typing.get_args(field.annotation)) == 1
        if literal and field.is_required():
            return f"{name}: {typing.get_args(field.annotation)[0]}"
    return None


def _intro(model: type[BaseModel]) -> str:
    import inspect

    doc = model.__dict__.get("__doc__")  # its own, not BaseModel's
    return " ".join(inspect.cleandoc(doc).split()) if doc else ""


def config_reference(markdown: bool = False) -> str:
    """Every field of every model of the run config: type, default and description, a section a
    model (`shrinkthink config`; with `markdown`, docs/config.md)."""
    import textwrap

    out: list[str] = []
    if markdown:
        out += ["# Configuration reference", "",
                "Generated from the field descriptions in `src/shrinkthink/config.py` by",
                f"`{REFERENCE_COMMAND}`; edit the descriptions, not this file.", "",
                "A YAML config sets these fields (`shrinkthink run CONFIG`); a `key=value` override sets one",
                "(`stages.explore.steps=50`: a stage by its name or its index). `shrinkthink config --defaults`",
                "prints the quickstart with every default filled in.", ""]
    else:
        out += ["Every field of the run config: type, default, and what it means. A YAML config sets them",
                "(shrinkthink run CONFIG); key=value overrides set one (stages.explore.steps=50).", ""]
    for model, paths in config_models():
        where = ", ".join(f"`{p}`" if markdown else p for p in paths if p) or "the top level"
        tag = _tag(model)
        if tag:
            where += f" with `{tag}`" if markdown else f" with {tag}"
        intro = _intro(model)
        if markdown:
            out += [f"## {model.__name__}", "", f"At {where}." + (f" {intro}" if intro else ""), ""]
        else:
            out += [f"{model.__name__}  (at {where})"]
            out += textwrap.wrap(intro, 100, initial_indent="  ", subsequent_indent="  ") if intro else []
        fields = list(model.model_fields.items())
        if tag:  # the tag says which member of the union this is: first, before the inherited fields
            fields.sort(key=lambda item: item[0] != tag.split(":")[0])
        for name, field in fields:
            kind, default, description = _type_text(field.annotation), _default_text(field), field.description or ""
            if markdown:
                out.append(f"- **`{name}`** (`{kind}`, default `{default}`): {description}".rstrip())
            else:
                out.append(f"  {name}: {kind} = {default}")
                out += textwrap.wrap(description, 100, initial_indent="      ", subsequent_indent="      ")
        out.append("")
    return "\n".join(out)
