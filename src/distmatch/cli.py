"""The `distmatch` command. Bad input ends with one line on stderr and exit status 2, never a traceback."""
from __future__ import annotations

import argparse
import errno
import os
import sys

from .errors import UserError, out_of_memory

EXIT_INTERRUPTED = 130


SOLVER_HELP = ("a teacher's sampler: heun or euler (its probability-flow ODE) or ancestral (DDPM's stochastic "
               "sampler, often better for a DDPM-trained teacher); default: the teacher's own")
DEVICE_HELP = ("where the model samples: cpu (default), cuda, cuda:N, or auto (a GPU when one is seen); "
               "a seed gives the same samples on any device")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are UserErrors (one line, exit 2)."""

    def error(self, message):
        command = self.prog.removeprefix("distmatch").strip()  # main() already says "distmatch: error:"
        commands = [a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        if commands and "required: command" in message:  # bare `distmatch`: say what it takes
            message = f"give a command: {', '.join(commands[0])} (distmatch COMMAND --help for each)"
        raise UserError(f"{command}: {message}" if command else message)


def _config_args(p, keys: str = "e.g. --set train.iters=500 train.batch_size=32"):
    p.add_argument("--config", metavar="FILE", help="YAML/JSON file of config values")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help=f"override config values, {keys} (repeatable)")


def _distill_epilog() -> str:
    """Every method's options with their defaults (for vector data / for images where they differ), then the
    recipes with what they add."""
    from .config import describe_fields, resolve
    from .methods import METHODS, config_class, defaults_for
    from .methods.recipes import RECIPES

    def rows(name):
        cls = config_class(name)
        vec, img = (describe_fields(cls, defaults=resolve(cls, base=defaults_for(name, kind)))
                    for kind in ("vector", "image"))
        return [(key, typ, dv, di) for (key, typ, dv), (_, _, di) in zip(vec, img)]

    reference = {r[0]: r for r in rows("dmd2")}
    lines = ["methods, each run as published, and their options (--set KEY=VALUE), defaults for 1-step students on",
             "vectors [for images where different]; train.* and student.* are shown under dmd2 and, for other",
             "methods, where their defaults differ:"]
    for name, (_, text) in METHODS.items():
        lines.append(f"\n  {name}: {text}")
        for key, typ, dv, di in rows(name):
            if name != "dmd2" and not key.startswith(name + ".") and reference.get(key) == (key, typ, dv, di):
                continue
            lines.append(f"    {key} = {dv}" + (f" [{di}]" if di != dv else "") + f"  ({typ})")
    lines.append("\nrecipes (--recipe NAME: a method plus levers measured to help it; runs in bench/RESULTS.md):")
    for name, recipe in RECIPES.items():
        lines.append(f"  {name} ({recipe.where()}): {recipe.about}; measured: {recipe.effect}")
    return "\n".join(lines)


def _model_commands(sub) -> None:
    """The commands that use a finished model: sample, evaluate, export."""
    p = sub.add_parser("sample", help="draw samples from a teacher or student")
    p.add_argument("--model", required=True, help="a teacher or student run folder, or a diffusers model folder")
    p.add_argument("--n", type=_positive_int, required=True, help="number of samples")
    p.add_argument("--out", required=True, help="output .npy (same layout/dtype/range as the data), .npz with "
                   "labels, or .png: a picture of them (an image grid, or a scatter of vectors)")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="solver steps (teacher), or a student's steps: its K, or k < K to stop after its first k "
                        "levels (an export's scheduler picks its own k levels: the same images at K only)")
    p.add_argument("--seed", type=_int, default=0, help="seed of the samples (default 0): the same seed, the same "
                   "samples")
    p.add_argument("--class", dest="cls", default=None, help="a class label as it was in the data")
    p.add_argument("--solver", default=None, help=SOLVER_HELP)
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)

    p = sub.add_parser("evaluate", help="measure a model against data (quality and speed), write JSON")
    p.add_argument("--model", required=True, help="a teacher or student run folder, or a diffusers model folder")
    p.add_argument("--data", required=True, help="reference data (a preset means its held-out test split)")
    p.add_argument("--n", type=_positive_int, default=2000, help="samples drawn and scored (default 2000)")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="solver steps (teacher) or a student's steps, as for sample (default: the model's own)")
    p.add_argument("--seed", type=_int, default=0, help="seed of the samples drawn (default 0)")
    p.add_argument("--out", required=True, help="output .json")
    p.add_argument("--solver", default=None, help=SOLVER_HELP)
    p.add_argument("--inception", default=None, metavar="FILE",
                   help="a local Inception-v3 TorchScript file for FID/KID (default $DISTMATCH_INCEPTION; without "
                        "one, images are scored on an in-domain network)")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP + "; scores are computed on the CPU")

    p = sub.add_parser("export", help="write a student as a folder stock diffusers loads (DiffusionPipeline)")
    p.add_argument("--model", required=True, help="a student run folder (of a diffusers teacher)")
    p.add_argument("--out", required=True, help="a new folder")


def build_parser() -> argparse.ArgumentParser:
    from .data import list_presets

    presets = ", ".join(list_presets())
    parser = _Parser(prog="distmatch", description="Distil a many-step diffusion teacher into a 1-4 step student.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("teacher", help="train a teacher (or take the exact one for Gaussian-mixture presets)")
    p.add_argument("--data", required=True, help=f"a preset ({presets}) or a path (.npy/.npz, image folder, idx)")
    p.add_argument("--out", required=True, help="run folder (re-running the command resumes it)")
    _config_args(p)

    p = sub.add_parser("distill", help="distil a teacher into a few-step student", epilog=_distill_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="a teacher run folder or a diffusers model folder")
    p.add_argument("--out", required=True, help="run folder (re-running the command resumes it)")
    p.add_argument("--method", default=None, help="dmd2 (default), dmd, fdistill, tdm, msd: each as published")
    p.add_argument("--recipe", default=None, help="a named recipe (a method plus measured levers; listed below)")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="the student's sampling steps K (default: the method's, 1; tdm 4)")
    p.add_argument("--data", default=None, help="training data (default: the teacher's)")
    _config_args(p)

    _model_commands(sub)

    p = sub.add_parser("demo", help="the main job: teacher, DMD2 student, evaluation and an HTML report")
    p.add_argument("--data", default="8gaussians", help=f"a preset ({presets}) or a path")
    p.add_argument("--out", default=None, help="output folder (default runs/demo-<data>)")
    p.add_argument("--steps", type=_positive_int, default=1, help="the student's steps")
    _config_args(p, "prefixed by the stage they configure: --set teacher.train.iters=500 distill.train.iters=1000")

    p = sub.add_parser("compare", help="run several methods against one teacher and write one report")
    p.add_argument("--data", default=None, help="a preset or your data (default 8gaussians); with --teacher, data "
                   "of its shape to distil on and score against")
    p.add_argument("--teacher", default=None, help="a teacher of yours (a run folder or a diffusers model folder) "
                   "instead of one trained on --data")
    p.add_argument("--methods", default="dmd2,dmd,fdistill,tdm", help="comma-separated method names")
    p.add_argument("--steps", default=None, help="comma-separated K per method (default: 1, tdm 4)")
    p.add_argument("--out", default=None, help="output folder (default runs/compare-<data>)")
    p.add_argument("--jobs", type=_positive_int, default=None,
                   help="distillations run at once (default: one per CPU core without a GPU, else 1)")
    _config_args(p, "teacher.KEY for the teacher, train.KEY / student.KEY for every method, METHOD.KEY for one: "
                    "--set teacher.train.iters=500 train.iters=1000 dmd2.gan=false")
    return parser


SINGLE = ("sample", "evaluate", "export")  # commands that train nothing: under a launcher, the first process runs them


def check_overrides_once(args) -> None:
    """A key given twice (or --steps against student.steps) is refused: the last one used to win in silence, even
    after an invalid first."""
    seen: dict[str, str] = {}
    steps = getattr(args, "steps", None)
    if steps is not None and getattr(args, "command", "") == "distill":
        seen["student.steps"] = f"--steps {steps}"
    for item in getattr(args, "overrides", None) or []:
        key = item.split("=", 1)[0].strip()
        if key in seen:
            raise UserError(f"{key} is given twice ({seen[key]} and --set {item}): give it once")
        seen[key] = f"--set {item}"


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import commands

    if not 0 <= getattr(args, "seed", 0) < 2 ** 32:
        raise UserError(f"--seed must be in 0..{2 ** 32 - 1}, got {args.seed}")
    if getattr(args, "out", None) == "":
        raise UserError("--out is empty: name a file or folder")
    check_overrides_once(args)

    if args.command in SINGLE and not _main_process():
        return 0  # the same samples and files once, not once per process
    return getattr(commands, args.command)(args) or 0


def _main_process() -> bool:
    """True unless this is a process other than rank 0 of a multi-process launch (torchrun's RANK variable)."""
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    from .errors import Interrupted

    try:
        code = run(argv)
    except UserError as e:
        if _main_process():  # every process of `accelerate launch` reads the same input: one line, not one each
            print(f"distmatch: error: {e}", file=sys.stderr)
        code = UserError.exit_code
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        # a path given that the file system refuses (--out naming a file, a folder without write access)
        if _main_process():
            print(f"distmatch: error: cannot write to {e.filename}: {e.strerror.lower()}", file=sys.stderr)
        code = UserError.exit_code
    except OSError as e:
        room = e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)
        if not room and e.filename is None:
            raise
        if _main_process():  # a full disk or a file-size limit: what was saved before is intact
            why = (e.strerror or str(e)).lower()
            print(f"distmatch: error: cannot write to {e.filename}: {why}; files written before are intact, re-run "
                  "the same command once there is room" if room else f"distmatch: error: {e.filename}: {why}",
                  file=sys.stderr)
        code = UserError.exit_code
    except RuntimeError as e:
        size = out_of_memory(e)
        if size is None:
            raise
        if _main_process():  # a batch too large for the machine
            asked = f" (an allocation of {size})" if size else ""
            print(f"distmatch: error: out of memory{asked}: lower the batch (train.batch_size) or the sample "
                  "count (--n)", file=sys.stderr)
        code = UserError.exit_code
    except Interrupted as e:
        if _main_process():
            print(f"distmatch: {e}", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except KeyboardInterrupt:
        if _main_process():
            print("distmatch: interrupted; re-run the same command to resume (from its last checkpoint, where it "
                  "had written one)", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)


if __name__ == "__main__":
    main()
