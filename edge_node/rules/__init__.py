"""The edge's state machines: plain classes without I/O.

:class:`~liveclass.edge_node.rules.state.ClassState` folds class-log entries
into the state of one class; every edge that folds the same log reaches the
same state. :class:`~liveclass.edge_node.rules.validate.Validator` checks one
member's message against that state and returns the entries to append or the
error to answer with.
"""

from liveclass.edge_node.rules.state import ClassState
from liveclass.edge_node.rules.validate import Outcome, Validator, error_event

__all__ = ["ClassState", "Outcome", "Validator", "error_event"]
