"""The federation's public-key infrastructure, in small self-contained modules.

``errors`` (exception types), ``files`` (atomic, permission-safe writes and a tiny TOML writer),
``certs`` (certificate, CSR and CRL builders, naming rules), ``trust`` (TLS contexts and the
application-level peer check) and ``kit`` (a site makes its own key and CSR, then installs
the certificate its coordinator signed). They depend only on :mod:`fedcare.core` and
``cryptography``, so a node can use ``trust`` without pulling in the hub service. The folder
layout of a federation lives one level up, in :mod:`fedcare.hub.provisioning`.
"""
