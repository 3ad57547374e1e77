"""Reports are built from saved results only (`results.json`), never from live models."""
