"""Readers for the on-disk formats, layout checks and the embedded demo set."""
