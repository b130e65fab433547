"""What a token is (`token.py`: the value, its kind, when it is servable, reading a token answer),
when to refresh it and how long to back off (`schedule.py`, pure), the injected clock
(`clock.py`), and how a token is answered to a caller (`render.py`)."""

from broker.core.tokens.token import (
    Kind,
    Token,
    TokenRejected,
    jwt_seconds_left,
    token_from_response,
)

__all__ = ["Kind", "Token", "TokenRejected", "jwt_seconds_left", "token_from_response"]
