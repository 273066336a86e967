"""Operator commands: `make run`, the service restarter."""
