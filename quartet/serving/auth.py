"""The cluster-token check: one server interceptor in front of every role's handlers.

Every RPC except the standard health service must carry `authorization: Bearer <token>`
metadata equal to the service's token (compared in constant time). Health stays open so
load balancers, compose healthchecks and launchers can probe a service without the secret;
server reflection is *not* exempt, because it lists every method and message of the
service (grpcurl passes the token with `-H 'authorization: Bearer ...'`).
"""

from __future__ import annotations

import hmac
import logging

import grpc

from quartet.security import TOKEN_METADATA_KEY, TOKEN_SCHEME
from quartet.serving.handlers import refusing

log = logging.getLogger("quartet.serving")

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without the right token with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("token: must not be empty")
        self._expected = (TOKEN_SCHEME + token).encode()

    def _authorized(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == TOKEN_METADATA_KEY:
                got = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(got, self._expected)
        return False

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        if self._authorized(handler_call_details.invocation_metadata):
            return handler
        log.info("%s -> UNAUTHENTICATED (missing or wrong cluster token)", method)
        return refusing(handler, grpc.StatusCode.UNAUTHENTICATED,
                        f"{method}: missing or wrong cluster token (metadata "
                        f"'{TOKEN_METADATA_KEY}: Bearer <token>'; see docs/security.md)")
