"""SMTP delivery to the relay: sans-I/O protocol, sessions, and the pool.

- `protocol.py`: the client transaction as a state machine (commands out as
  bytes, replies in), pipelining (RFC 2920), BDAT windows (RFC 3030), and
  every classification rule;
- `outcomes.py`: what replies mean: the outcome values and the pure decisions;
- `wire.py`: the bytes themselves: reply parsing, command and body encoding;
- `session.py`: one connection: sockets, TLS, AUTH, timeouts;
- `relays.py`: the pool of `connections` sessions to one relay (`batch.py`: one call's workers);
- `throttle.py`, `health.py`: a relay's rate and connections now (AIMD), and whether it is up;
- `fleet.py`: several relays: routing by sender, priority and weight, failover, quotas.
"""

from .outcomes import SendResult
from .protocol import Envelope, Extensions, Kind, Outcome, RecipientResult, Reply, classify
from .relays import TLS_MODES, Relay
from .session import IDLE_PROBE, Session, SessionError
from .throttle import TokenBucket

__all__ = ["Envelope", "Extensions", "IDLE_PROBE", "Kind", "Outcome", "RecipientResult", "Relay", "Reply",
           "SendResult", "Session", "SessionError", "TLS_MODES", "TokenBucket", "classify"]
