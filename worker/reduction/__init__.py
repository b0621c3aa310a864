"""Token reduction before the language model (composed with KV pruning, ``pruning/``)."""
