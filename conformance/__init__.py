"""chainsuite conformance suite: CLI, adapters and case catalogue."""
