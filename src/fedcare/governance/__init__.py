"""Governance building blocks, each usable on its own and each failing closed.

* :mod:`fedcare.governance.audit_log` - a signed, hash-chained, append-only audit trail that
  a regulator can check without trusting whoever kept it.
* :mod:`fedcare.governance.site_policy` - the site's own rules for which studies and tasks it
  runs and which results may leave it; the hub can never set them.
* :mod:`fedcare.governance.sandbox` - runs a study's untrusted model code in a child process
  with resource limits, no network and none of the node's secrets.

This package is a leaf of the layering: it imports :mod:`fedcare.core` and third-party
libraries only, so the hub, the node and the engine can all wire it in.
"""
