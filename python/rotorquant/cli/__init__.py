"""Command-line entry points (``rq-run``)."""
