"""The process: the ``igate-bus`` CLI, logging, and the wiring of config to connectors and routes."""
