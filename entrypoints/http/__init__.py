"""The HTTP edge: controllers, request/response structs, auth, error mapping."""
