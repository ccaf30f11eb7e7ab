"""Ground floor: contract types, safe checkpoint and result I/O, errors, paths."""
