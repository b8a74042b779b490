"""Model executors."""
