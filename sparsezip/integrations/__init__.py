"""Optional bridges to other tools. Nothing here is imported by the rest of the package."""
