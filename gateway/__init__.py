"""keygate: an API-key reverse-proxy authentication gateway for REST backends."""

__version__ = "0.1.0"
