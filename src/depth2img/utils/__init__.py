"""Small helpers with no model knowledge: atomic files, logging."""
