"""Merkle checkpoints and proofs, peer discovery and exchange, settlement (later issues)."""
