"""What bridge tells its operator: logs and metrics."""
