"""Settings and the routes/connectors configuration, loaded with line numbers and validated."""
