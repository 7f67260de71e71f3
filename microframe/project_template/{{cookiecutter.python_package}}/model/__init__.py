"""The service's data: storage access and domain types, used by the controllers."""
