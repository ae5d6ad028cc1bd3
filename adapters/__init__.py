"""Adapters: pure mapping functions from one system's model to another's.

Third step of a message's path (event → route → **adapter** → connector → result/DLQ).
"""
