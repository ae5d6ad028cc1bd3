"""Real-protocol servers standing in for the external systems, with a record and fault switches."""
