"""How tasks reach sites and replies come back: one small interface, several carriers."""

from fedcare.transport.base import Outgoing, Received, Transport
from fedcare.transport.inmemory import InMemoryTransport

__all__ = ["InMemoryTransport", "Outgoing", "Received", "Transport"]
