"""Small helpers with no model knowledge: atomic files, dtypes, memory, random tensors."""
