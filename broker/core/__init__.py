"""Tokens: credentials, upstream clients, cache with single flight, refresh schedule, rendering.

Nothing here sees an HTTP request. May import observe and config only; the clock and the HTTP
session are passed in through constructors.
"""
