"""The one error hierarchy of fedtrust.

Every error carries a message a user can act on: what is wrong and how to fix
it. Messages that may cross the wire name the rule that was broken, never a
data value. Servicers map these classes to gRPC status codes in one place
(`fedtrust.transport.status`); the CLI prints them without a traceback.
"""
from __future__ import annotations


class Error(Exception):
    """Base of every fedtrust error."""

    #: short machine-readable kind, also used on the wire
    kind = "error"

    def diagnostics(self) -> str:
        return str(self)


class ConfigError(Error):
    """A local file, flag or configuration value is wrong."""

    kind = "config"


class InvalidInput(Error):
    """A message or payload is malformed, oversized or of the wrong type."""

    kind = "invalid-input"


class VerificationError(Error):
    """A signature, digest, certificate or signed object does not verify."""

    kind = "verification"


class PolicyViolation(Error):
    """The contract's rules forbid what was asked."""

    kind = "policy"


class BudgetExhausted(PolicyViolation):
    """A query cap or privacy budget would be exceeded."""

    kind = "budget"


class ReplayError(Error):
    """A job id or nonce was already used for a different job."""

    kind = "replay"


class NotFound(Error):
    """A job, product or result is unknown."""

    kind = "not-found"


class NodeUnreachable(Error):
    """A peer could not be reached or did not answer in time (transport)."""

    kind = "unreachable"


class JobFailed(Error):
    """A federated job failed; the message says which participant and why."""

    kind = "job-failed"


class ContextNeeded(Error):
    """A job named the buyer's HE context by digest only and this daemon keeps no copy of it: resend it with the job."""

    kind = "context-needed"


class Overloaded(Error):
    """A daemon refuses a call to stay responsive: too many concurrent calls from one caller, or it is stopping."""

    kind = "overloaded"
