"""Errors an operator can act on: the CLI prints their message on one line and exits 2."""


class TrailguardError(Exception):
    """Base of every error whose message already says what is wrong and what to do."""
