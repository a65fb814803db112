"""``fedcare demo``: a real federation (hub + three site nodes, mutual TLS) on one machine."""
