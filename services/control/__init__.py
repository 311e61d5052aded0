"""Operator commands (replay, cancel) produced to the control topic."""
