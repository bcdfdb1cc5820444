"""Input/output helpers: atomic writes, downloads, restricted unpickling."""
