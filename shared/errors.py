"""Every failure Careline raises on purpose, in one place.

    CarelineError                 base: a message a user can act on
    ├── ProtocolError             a peer sent bytes that are not a valid message
    │   └── MessageTooLarge       ... or more bytes than the limit allows
    ├── AuthError                 unknown, revoked or wrongly signed identity, bad token
    ├── PermissionDenied          a technician's role does not allow the action
    ├── VerificationError         a signature, hash, length or metadata check failed
    │   └── ManifestMismatch      installed files differ from their manifest
    ├── NotFound                  a customer, agent, contract ... that does not exist
    ├── Conflict                  the request contradicts stored state (already exists, spent)
    ├── ConfigError               a data dir, state dir, policy or join string is unusable
    │   └── Unreachable           ... or the coordinator cannot be reached at all
    └── RemoteError               the coordinator answered a technician request with an error

The CLIs turn any of these into one line on stderr and a non-zero exit.
"""

from __future__ import annotations


class CarelineError(Exception):
    """Base class: str(error) is the one line shown to the user."""

    code = "error"


class ProtocolError(CarelineError):
    code = "protocol"


class MessageTooLarge(ProtocolError):
    code = "too_large"


class AuthError(CarelineError):
    code = "auth"


class PermissionDenied(CarelineError):
    code = "forbidden"


class VerificationError(CarelineError):
    code = "verification"


class ManifestMismatch(VerificationError):
    code = "manifest_mismatch"


class NotFound(CarelineError):
    code = "not_found"


class Conflict(CarelineError):
    code = "conflict"


class ConfigError(CarelineError):
    code = "config"


class Unreachable(ConfigError):
    code = "unreachable"


class RemoteError(CarelineError):
    """An error the coordinator sent back; `code` is the remote error's code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
