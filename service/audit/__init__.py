"""The audit trail: append-only entries, a batched durable writer, a Merkle-tree
sequencer with signed checkpoints, proofs, queries and export."""
