"""Authentication and authorisation of the calls served: bearer tokens and mTLS identities.

``AuthMiddleware`` (in ``MIDDLEWARE`` by default, out of the chain while ``AUTH["ENABLED"]`` is
false) answers ``UNAUTHENTICATED`` to a call without valid credentials and ``PERMISSION_DENIED``
to an identity the method does not allow; ``ctx.identity`` tells the controller who called.
"""
