"""The hub: the coordinating service of a federation (API, persistence, scheduling, provisioning).

Kept import-free on purpose: importing :mod:`fedcare.hub.provisioning` or :mod:`fedcare.pki`
must not start or import the hub service.
"""
