"""Pre-training: one generic Accelerate loop; methods plug their step into it."""
