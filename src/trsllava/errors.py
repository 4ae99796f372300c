"""User-facing errors: one class, so the CLI and the Snakemake scripts can print them in one line."""


class TrsllavaError(Exception):
    """An input problem the user can fix. The message names the file, key or value at fault."""
