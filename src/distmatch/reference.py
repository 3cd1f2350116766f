"""The reference page (docs/reference.md), generated from the code so it cannot drift from it: the command's help,
every sub-command's, and the Python API's signatures and docstrings.

    python -m distmatch.reference > docs/reference.md
"""
from __future__ import annotations

import inspect
import os

WIDTH = "110"  # argparse wraps help to the terminal: a fixed width keeps the page the same everywhere


def command_help() -> list[str]:
    """`distmatch --help` and each sub-command's help, as argparse prints them."""
    from .cli import build_parser

    before, os.environ["COLUMNS"] = os.environ.get("COLUMNS"), WIDTH
    try:
        return _helps(build_parser())
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def _helps(parser) -> list[str]:
    """The parser's help, then each sub-command's."""
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    out = ["## The command", "", "```", parser.format_help().rstrip(), "```"]
    for name, command in sub.choices.items():
        out += ["", f"### distmatch {name}", "", "```", command.format_help().rstrip(), "```"]
    return out


def api_help() -> list[str]:
    """Each public function's signature and docstring, the exceptions the API raises, the Model's public methods
    and properties."""
    import distmatch

    out = ["## Python", ""]
    for name in distmatch.__all__:
        obj = getattr(distmatch, name)
        if inspect.isfunction(obj):
            out += [f"### distmatch.{name}", "", "```python", f"distmatch.{name}{signature(obj)}", "```", "",
                    inspect.getdoc(obj) or "", ""]
    for name in distmatch.__all__:  # the exceptions the API raises
        obj = getattr(distmatch, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            out += [f"### distmatch.{name}", "", inspect.getdoc(obj) or "", ""]
    out += ["### distmatch.Model", "", inspect.getdoc(distmatch.Model) or "", ""]
    for name, member in vars(distmatch.Model).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            out += [f"- `{name}` (property): {one_line(member)}"]
        elif inspect.isfunction(member):
            out += [f"- `{name}{signature(member)}`: {one_line(member)}"]
    return out


def one_line(obj) -> str:
    return " ".join((inspect.getdoc(obj) or "").split())


def signature(fn) -> str:
    """A function's signature with its annotations as written (not as quoted strings)."""
    text = str(inspect.signature(fn, eval_str=True))
    return text.replace("torch.nn.modules.module.Module", "torch.nn.Module").replace("distmatch.api.Model", "Model")


def render() -> str:
    head = ["# Reference", "", "Generated from the code by `python -m distmatch.reference > docs/reference.md`; "
            "every setting's key and defaults are in [settings.md](settings.md).", ""]
    return "\n".join(head + command_help() + [""] + api_help()).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
