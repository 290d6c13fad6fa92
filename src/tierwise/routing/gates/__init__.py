"""Cascade confidence gates: each turns a rung's answer into a confidence in [0, 1].

Hard rules come first and apply to every gate: an empty answer or ``finish_reason: length`` is confidence 0. A gate
that raises is treated as confidence 0 by the executor ("escalate"), never as a pass.
"""

from tierwise.routing.gates.base import Gate, GateContext, GateError, RungAnswer, build_gate, hard_fail

__all__ = ["Gate", "GateContext", "GateError", "RungAnswer", "build_gate", "hard_fail"]
