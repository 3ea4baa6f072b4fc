"""Pure-numpy planning: scales (:mod:`.scales`), SFC decisions (:mod:`.sfc`), the
QuantPlan (:mod:`.quantplan`), the planner (:mod:`.planner`) and the integer
constants of each node (:mod:`.program`)."""

from .quantplan import LayerQuant, QuantPlan, TensorQuant

__all__ = ["QuantPlan", "TensorQuant", "LayerQuant"]
