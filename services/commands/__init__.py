"""Typer sub-applications of the ``switchyard`` command line, one module per command group."""
