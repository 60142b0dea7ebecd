"""What every stage builds on: the task spec, data files, the run directory, model names and the
settings shared by the trained methods."""
