"""Batteries: metrics, registry, rate limiting, tracing, logging and more, each a package."""
