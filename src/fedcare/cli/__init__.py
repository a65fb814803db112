"""The ``fedcare`` command (thin: it calls the same services as the Python API)."""
