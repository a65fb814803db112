"""How tasks reach sites and replies come back: one small interface, several carriers."""

from fedcare.transport.base import Transport
from fedcare.transport.inmemory import InMemoryTransport

__all__ = ["InMemoryTransport", "Transport"]
