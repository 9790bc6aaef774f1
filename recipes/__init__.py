"""recipes package (see DESIGN.md)."""
