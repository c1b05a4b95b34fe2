"""Robust training objectives (one file each) and the regularisers that compose with them.

Every objective is called as ``objective(model, x, y) -> ObjectiveOutput``; see
:mod:`convertsnn.objectives.base`. Add one by writing a file with a ``@register_objective``
subclass of :class:`Objective` and importing it here.
"""

from convertsnn.objectives import (  # noqa: F401  (register)
    ard,
    distill,
    layer_distill,
    mart,
    mppd,
    natural,
    pgd_at,
    rslad,
    rssnn,
    sparsity,
    trades,
    trades_rfgsm,
)
from convertsnn.objectives.base import Objective, ObjectiveOutput, kl_divergence
from convertsnn.objectives.registry import (
    get_objective,
    list_objectives,
    objective_class,
    register_objective,
)
from convertsnn.objectives.regularizers import (
    Regularizer,
    get_regularizer,
    list_regularizers,
    register_regularizer,
    regularized_loss,
)

__all__ = [
    "Objective",
    "ObjectiveOutput",
    "Regularizer",
    "get_objective",
    "get_regularizer",
    "kl_divergence",
    "list_objectives",
    "list_regularizers",
    "objective_class",
    "register_objective",
    "register_regularizer",
    "regularized_loss",
]
