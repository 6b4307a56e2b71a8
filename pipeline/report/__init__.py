"""Review outputs built from the tables."""
