"""Caption generation: the prompt registry, output parsing and quality checks of the VLM backends."""
