"""Method adapters, one package per paper, and the blocks they share (methods.common)."""
