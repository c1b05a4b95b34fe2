"""Workarounds for third-party packages, kept in one place."""
