"""modalities package (see DESIGN.md)."""
