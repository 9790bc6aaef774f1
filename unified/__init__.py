"""unified package (see DESIGN.md)."""
