"""The registry battery's commands."""
