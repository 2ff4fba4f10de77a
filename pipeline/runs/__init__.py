"""The run directory and what it records: its layout, checkpoints, provenance, training recipes, tracking, the export format."""
