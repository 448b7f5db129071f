"""The `dispatch` command line (typer): stack, topics, demo."""
