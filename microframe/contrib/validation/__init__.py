"""Request validation from protovalidate rules written in the protos (the ``validate`` extra).

A proto imports ``buf/validate/validate.proto`` (shipped with microframe; ``genproto`` finds
it) and puts rules on its fields and messages; ``ValidationMiddleware``, in the default
``MIDDLEWARE``, answers a request that breaks them INVALID_ARGUMENT with a
``google.rpc.BadRequest``. See docs/topics/validation.md.
"""
