"""Errors a client causes by breaking a domain rule; the HTTP edge maps them to 400."""


class InvalidInput(ValueError):
    """Input that breaks a domain rule; the message says which rule, for the client."""


class InvalidSessionId(InvalidInput):
    pass


class InvalidMessage(InvalidInput):
    pass
