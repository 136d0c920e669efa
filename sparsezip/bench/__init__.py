"""The benchmark matrix as plain data and functions: rows derived from the method registry, cases, quality
expectations and machine info. ``benchmarks/`` (pytest) is the thin layer that runs them."""
