"""The retrieval protocol of the field, in both directions, with exact tie handling."""
