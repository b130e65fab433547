"""The HTTP surface: routes, handlers, caller identity, connection limits and the JSON error shape.

May import core, observe and config. Knows requests; holds no token logic of its own.
"""
