"""pc-token-broker: hands Microsoft Partner Center access tokens to local tools."""

__version__ = "0.1.0"
