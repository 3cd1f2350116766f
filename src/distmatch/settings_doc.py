"""The settings reference (docs/settings.md), generated from the option dataclasses so it cannot drift from them.

    python -m distmatch.settings_doc > docs/settings.md

Each key's text is the comment written beside its field in the source; its defaults are resolved exactly as the
commands resolve them, for vector data and for images.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing

from .config import describe_fields, resolve


def field_comments(cls) -> dict[str, str]:
    """The `# ...` comment on a dataclass field's line and the comment-only lines that continue it."""
    try:
        source = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # a class made at run time (a method's whole config) has no source
        return {}
    out, current = {}, None
    for line in source:
        field = re.match(r"^    (\w+): [^#]*?(?:#\s*(.*))?$", line)
        if field and field.group(1) in cls.__dataclass_fields__:
            current = field.group(1)
            out[current] = field.group(2) or ""
        elif current is not None and re.match(r"^\s{5,}#", line):  # a continuation, deeper than a field
            out[current] = (out[current] + " " + line.strip().lstrip("#").strip()).strip()
        else:
            current = None
    return out


def comments_by_key(cls, prefix: str = "") -> dict[str, str]:
    """Comments for every dotted key of a (nested) config dataclass."""
    out = {prefix + k: v for k, v in field_comments(cls).items()}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(comments_by_key(hints[f.name], prefix + f.name + "."))
    return out


def table(rows: list[tuple[str, str, str, str]], comments: dict[str, str]) -> list[str]:
    lines = ["| key | type | vectors | images | what it does |", "|---|---|---|---|---|"]
    for key, typ, dv, di in rows:
        text = comments.get(key, "").replace("|", "\\|")
        lines.append(f"| `{key}` | {typ.replace('|', 'or')} | `{dv}` | `{di}` | {text} |")
    return lines


def defaults_rows(cls, bases: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    vec, img = (describe_fields(cls, defaults=resolve(cls, base=bases[kind])) for kind in ("vector", "image"))
    return [(key, typ, dv, di) for (key, typ, dv), (_, _, di) in zip(vec, img)]


def teacher_section() -> list[str]:
    from .teachers.train import IMAGE_DEFAULTS, VECTOR_DEFAULTS, TeacherConfig

    rows = defaults_rows(TeacherConfig, {"vector": VECTOR_DEFAULTS, "image": IMAGE_DEFAULTS})
    return ["## `distmatch teacher`", "",
            "Gaussian-mixture presets take the exact teacher and only fit a network to it (1000 iterations, "
            "`p_std` 1.8).", ""] + table(rows, comments_by_key(TeacherConfig))


def method_sections() -> list[str]:
    from .methods import METHODS, config_class, defaults_for

    lines = ["## `distmatch distill`", "",
             "`train.*` and `student.*` below are dmd2's; each method's own section follows, with the `train.*` and "
             "`student.*` defaults it changes. Defaults are for 1-step students (`--steps 1`) unless the method's "
             "default step count differs.", ""]
    reference = None
    for name, (_, about) in METHODS.items():
        cls = config_class(name)
        rows = defaults_rows(cls, {k: defaults_for(name, k) for k in ("vector", "image")})
        if reference is None:
            reference = {r[0]: r for r in rows}
            shared = [r for r in rows if not r[0].startswith(name + ".")]
            lines += ["### `train.*` and `student.*`", ""] + table(shared, comments_by_key(cls)) + [""]
        own = [r for r in rows if r[0].startswith(name + ".") or reference.get(r[0]) != r]
        lines += [f"### `{name}`: {about}", ""] + table(own, comments_by_key(cls)) + [""]
    return lines


def recipe_section() -> list[str]:
    from .methods.recipes import RECIPES

    lines = ["## Recipes (`--recipe NAME`)", "",
             "A recipe is a method plus levers measured to help it; its settings are laid over the method's "
             "defaults (your `--set` still wins), keyed by kind of data and step count (`vector:1` for 1-step "
             "students, `vector:K` for K > 1). Measured effects: `bench/RESULTS.md`, \"Published methods and "
             "recipes\".", "", "| recipe | method | adds | measured | settings |", "|---|---|---|---|---|"]
    for name, r in RECIPES.items():
        lines.append(f"| `{name}` | {r.method} | {r.about} | {r.effect} | `{json.dumps(r.settings)}` |")
    return lines + [""]


def render() -> str:
    head = ["# Settings reference", "",
            "Generated from the code by `python -m distmatch.settings_doc`; do not edit by hand. Every key can be "
            "set with `--set KEY=VALUE`, in a YAML file given to `--config`, or in the `settings` dict of the Python "
            "API. Unknown keys and wrong types are refused with one line naming the key.", ""]
    return "\n".join(head + teacher_section() + [""] + method_sections() + recipe_section())


if __name__ == "__main__":
    print(render(), end="")
