"""Connectors: the I/O to each external system, and nothing else.

Fourth step of a message's path (event → route → adapter → **connector** → result/DLQ).
"""
