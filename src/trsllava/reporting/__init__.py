"""Ablation tables and figures built from the per-evaluation metrics files."""
