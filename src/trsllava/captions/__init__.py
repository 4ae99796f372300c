"""Caption sets: the machine-written database text of every image, in one merged table."""
