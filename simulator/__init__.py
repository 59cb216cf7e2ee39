"""chainsuite reference implementation: formats, backing strings, the chain prober, profiles."""
