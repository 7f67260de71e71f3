"""The request path: router, middleware chain, request context, server runtime, checks."""
