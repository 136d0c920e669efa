"""SparseZip, the project's own method, as a sub-package: the method, its strict YAML config and dynamic K."""

from sparsezip.methods.sparsezip.method import SparseZip

__all__ = ["SparseZip"]
