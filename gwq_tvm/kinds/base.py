"""What a node kind declares: the base class every kind module subclasses.

A kind is everything gwq-tvm knows about one sort of node, in one module:

============== ==========================================================================
stage          what the kind provides
============== ==========================================================================
frontend       ``ops`` and :meth:`Kind.match`: how it is recognised in canonical Relax
calibration    ``observed``: whether calibration records its output's statistics
planning       :meth:`Kind.sfc_edges` (the GWQ grouping's graph) and :meth:`Kind.recipe`,
               its integer constants as data (from :mod:`gwq_tvm.plan.program`), with
               :meth:`Kind.sfcs` naming the SFCs of a recipe for the reports
backends       :meth:`Kind.realize` (Relax integer ops, :mod:`gwq_tvm.passes.realize`),
               :meth:`Kind.simulate` (float fake-quant Relax, :mod:`gwq_tvm.calibration.sensitivity`),
               :meth:`Kind.qat` and :meth:`Kind.float_torch` (torch, :mod:`gwq_tvm.qat.model`),
               :meth:`Kind.to_onnx` (:mod:`gwq_tvm.qat.export`)
============== ==========================================================================

A kind module imports neither TVM nor torch at module level (planning is
pure numpy): its backend methods import what they emit with, and receive the
backend's emitter, which owns the arithmetic shared by all kinds (quantize,
SFC, clip, accumulator finish).  The numpy reference
(:mod:`gwq_tvm.reference`) is *not* a backend: it interprets the emitted
Relax op by op, so it checks the recipes and their lowering independently.
"""

from __future__ import annotations

from ..errors import UnsupportedOpError


class Kind:
    """A node kind (subclass per module; register the instance in :mod:`gwq_tvm.kinds`).

    Attributes
    ----------
    zero_point_out : bool
        See :meth:`accepts_zero_point`.
    name : str
        The registry key, ``Node.kind``.
    ops : tuple of str
        Relax op names :meth:`match` is tried on.
    passthrough : bool
        The output reuses the input's quantized tensor (same scale, no SFC).
    accumulates : bool
        The node produces an int32 accumulator that an SFC turns into its
        output tensor (or the program dequantizes directly when it is final).
    """

    name: str = ""
    ops: tuple = ()
    passthrough: bool = False
    accumulates: bool = False
    #: can the node's output carry a nonzero zero point (its program adds ``z_out`` exactly)?
    zero_point_out: bool = False

    def accepts_zero_point(self, graph, node, layers) -> bool:
        """Does the node stay exact when its inputs carry nonzero zero points?

        ``layers`` maps layer names to their :class:`~gwq_tvm.plan.quantplan.WeightQuant`.
        The planner gives a tensor a zero point only when its producer has
        :attr:`zero_point_out` and every reader (through passthrough readers)
        accepts it (:func:`gwq_tvm.plan.program.zero_point_blocker`).
        """
        return False

    # --- frontend ----------------------------------------------------------
    def match(self, walker, index: int, call) -> bool:
        """Turn binding ``index`` (``call``) and what it absorbs into a node; ``False`` to decline."""
        return False

    # --- calibration ---------------------------------------------------------
    @property
    def observed(self) -> bool:
        """Does calibration record this node's output (every tensor owner does)?"""
        return not self.passthrough

    # --- planning (numpy) ------------------------------------------------------
    def sfc_edges(self, graph, node) -> list:
        """The :class:`~gwq_tvm.plan.program.SfcEdge` s this node's integer program performs."""
        return []

    def unit_scale_inputs(self, graph, node) -> list:
        """Input tensors whose scale must be a power of two (mantissa 1) for this node's SFC to be a shift.

        GWQ's grouping works with pairwise edges; a node whose SFC ratio
        involves a third tensor (a product ``s_a * s_b / s_out``) names it here,
        and the planner gives it a mantissa-1 scale when nothing else constrains
        it (:func:`gwq_tvm.plan.planner.build_plan`).
        """
        return []

    def recipe(self, graph, node, plan):
        """The node's integer constants under ``plan`` (a frozen dataclass), ``None`` when it has none."""
        return None

    def sfcs(self, graph, node, plan) -> dict:
        """``{port: SFC}`` of the node's edges (ports as in :meth:`sfc_edges`)."""
        return {}

    # --- backends --------------------------------------------------------------
    def realize(self, em, node) -> None:
        """Emit the node's integer ops (:class:`gwq_tvm.passes.realize.Emitter`)."""
        raise self._unsupported("the integer program")

    def simulate(self, em, node) -> None:
        """Emit the node in float with fake-quantized outputs (:class:`gwq_tvm.calibration.sensitivity.Emitter`)."""
        raise self._unsupported("the fake-quant simulator")

    def qat(self, run, node) -> None:
        """Compute the node's real value and integers in torch (:class:`gwq_tvm.qat.model.Run`)."""
        raise self._unsupported("QAT")

    def float_torch(self, node, ins: list):
        """The node's float function in torch on its inputs' values (the distillation teacher)."""
        raise self._unsupported("QAT")

    def to_onnx(self, writer, node, raw: str) -> str | None:
        """Append the node's ONNX ops writing ``raw``; return a different output name to skip the fused act."""
        raise self._unsupported("ONNX export")

    def _unsupported(self, what: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{what} does not support node kind {self.name!r}")

    def __repr__(self) -> str:
        return f"<kind {self.name}>"
