"""Model availability: fetched once per run, skipped (and said) where they cannot be had."""
