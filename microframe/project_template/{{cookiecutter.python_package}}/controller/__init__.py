"""The business code: one module per service of idl/, one function per RPC."""
