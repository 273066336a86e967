"""Contracts shared by every service: events, stream names, settings, broker factory."""
