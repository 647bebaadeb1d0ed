"""What every layer of rsitr_hf shares: input errors, crash-safe files and the cache folder, the command-line
conventions, work dealt out over ``accelerate launch``'s processes, plotting, and the table of module paths
that moved since 0.1. Nothing here imports another part of rsitr_hf."""
