"""distmatch: distribution matching distillation of diffusion teachers into 1-4 step students.

    import distmatch
    teacher = distmatch.train_teacher("moons", "runs/t")
    student = distmatch.distill(teacher, "runs/s")
    x = student.sample(1000)
"""
__version__ = "0.1.0"

from .api import Model, distill, evaluate, export, load, train_teacher, wrap_teacher  # noqa: E402
from .errors import Interrupted, UserError  # noqa: E402

__all__ = ["Interrupted", "Model", "UserError", "distill", "evaluate", "export", "load", "train_teacher",
           "wrap_teacher", "__version__"]
