"""Message models: the bus envelope, iGate events, each system's requests and replies, and the error tree.

First step of a message's path: what arrives is parsed here before any route touches it.
"""
