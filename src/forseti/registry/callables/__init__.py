"""Registered functions called with provenance: ``reg.callables``, ``reg.call``, addresses."""

from .addresses import parse_address, resolve_address
from .catalog import CallableMark, CallableRegistry, callable
from .facet import CallablesMixin
from .invoke import Invocation, prepare
from .records import CallRecord, CallStatus, FunctionEntity
from .spec import FunctionSpec, Param

__all__ = [
    "CallableRegistry",
    "CallablesMixin",
    "CallableMark",
    "callable",
    "CallRecord",
    "CallStatus",
    "FunctionEntity",
    "FunctionSpec",
    "Param",
    "Invocation",
    "prepare",
    "parse_address",
    "resolve_address",
]
