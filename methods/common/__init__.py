"""Blocks shared by several papers: region encoder, text encoders, losses, vocabularies, checkpoints."""
