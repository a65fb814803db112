"""Privacy mechanisms: differential privacy, secure aggregation, homomorphic encryption, audits."""
