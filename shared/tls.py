"""TLS client contexts: every connection to the coordinator trusts exactly one pinned CA."""

from __future__ import annotations

import ssl


def pinned_client_context(ca_pem: str) -> ssl.SSLContext:
    """Verify the server against the pinned CA only (never the system store)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=ca_pem)
    return context


def first_contact_context() -> ssl.SSLContext:
    """For enrollment only, before the CA is known: encrypts but does not verify.

    The caller must check the peer certificate against the join string's CA fingerprint
    (shared.keys.check_issued_by) before sending anything secret.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def refused_while_busy(error: BaseException) -> bool:
    """Did the server drop this connection during the TLS handshake, as a coordinator whose
    event loop runs late does (it refuses at the ClientHello)? Worth retrying shortly; a
    certificate that fails the pinned CA, or a refused TCP connection, is not."""
    return isinstance(error, (ConnectionResetError, ssl.SSLEOFError))
