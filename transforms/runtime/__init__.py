"""Runtime helpers: compact element packing, progress reporting, and isolated decoder
processes."""
