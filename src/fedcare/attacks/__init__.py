"""Attacks on a trained federation, run to measure what its protections hold.

An application layer over the engine, the simulation and the learners (it trains shadow
models and rebuilds sites), kept apart from :mod:`fedcare.privacy`, whose mechanisms know only
:mod:`fedcare.core`. Membership inference lives here now; poisoning and other robustness
attacks belong beside it. (The word "audit" is kept for the governance audit trail.)
"""
