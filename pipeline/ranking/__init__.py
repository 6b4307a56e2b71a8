"""Ranking: rules of the paper applied to the lesion table; injection and monitoring sets."""
