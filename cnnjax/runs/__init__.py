"""A run's life on disk: its workdir, checkpoints, signals, written outputs and reports, and
finding a saved run again."""
