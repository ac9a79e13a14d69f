# Design: endpoint strings.
#
# This module owns the one place where an address written by a person becomes a
# typed value: ``tcp://host:port``, ``tcp://[::1]:port``, ``unix:///path``,
# ``udp://host:port`` and ``tls://host:port?cert=..&key=..&ca=..&verify=..``.
# Servers, clients and datagram endpoints all take either the string or an
# ``Endpoint``.  Parsing is strict and errors say what is wrong and how to write
# it (EndpointError, a ValueError).
#
# Rejected: Twisted's strports mini-language (``tcp:8080:interface=127.0.0.1``),
# which needs its own escaping rules; URLs are familiar and urllib parses them.
# Rejected: guessing a scheme for bare ``host:port`` (is it TCP or UDP?).

from __future__ import annotations

import ssl as _ssl
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

from ..errors import EndpointError

__all__ = ["Endpoint", "parse_endpoint"]

Scheme = Literal["tcp", "tls", "unix", "udp", "unixgram"]
_SCHEMES = ("tcp", "tls", "unix", "udp", "unixgram")
_TLS_OPTIONS = frozenset({"cert", "key", "ca", "verify", "hostname", "password"})
_VERIFY = {
    "none": _ssl.CERT_NONE,
    "false": _ssl.CERT_NONE,
    "0": _ssl.CERT_NONE,
    "optional": _ssl.CERT_OPTIONAL,
    "required": _ssl.CERT_REQUIRED,
    "true": _ssl.CERT_REQUIRED,
    "1": _ssl.CERT_REQUIRED,
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed endpoint.

    Attributes:
        scheme: ``"tcp"``, ``"tls"``, ``"unix"``, ``"udp"`` or ``"unixgram"``
            (Unix datagram sockets).
        host: host name or address (without brackets); ``None`` for unix.
        port: port number (0 asks the OS for a free one); ``None`` for unix.
        path: the socket path for unix and unixgram endpoints.
        options: the query options (tls: cert, key, ca, verify, hostname, password).
    """

    scheme: Scheme
    host: str | None = None
    port: int | None = None
    path: str | None = None
    options: tuple[tuple[str, str], ...] = field(default=())

    @property
    def is_tls(self) -> bool:
        """Whether connections to/from this endpoint use TLS."""
        return self.scheme == "tls"

    @property
    def is_stream(self) -> bool:
        """Whether this is a stream (tcp, tls, unix) rather than a datagram endpoint."""
        return self.scheme not in ("udp", "unixgram")

    def option(self, name: str, default: str | None = None) -> str | None:
        """The value of query option ``name``, or ``default``."""
        for key, value in self.options:
            if key == name:
                return value
        return default

    def with_port(self, port: int) -> Endpoint:
        """A copy with another port (used to report the port bound for port 0)."""
        return replace(self, port=port)

    def __str__(self) -> str:
        if self.scheme in ("unix", "unixgram"):
            return f"{self.scheme}://{self.path}"
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        text = f"{self.scheme}://{host}:{self.port}"
        if self.options:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.options)
        return text

    def ssl_context(self, *, server_side: bool) -> _ssl.SSLContext:
        """Build an SSL context from the tls options.

        Server side: ``cert`` and ``key`` are required; ``ca`` plus
        ``verify=required`` asks clients for certificates (mutual TLS).
        Client side: ``ca`` replaces the system trust store; ``cert``/``key``
        present a client certificate; ``verify=none`` turns checking off.

        Args:
            server_side: whether the context is for a server.

        Returns:
            A new :class:`ssl.SSLContext`.

        Raises:
            EndpointError: options are missing or files cannot be loaded.
        """
        cert, key, ca = self.option("cert"), self.option("key"), self.option("ca")
        verify_text = self.option("verify")
        verify = None if verify_text is None else _VERIFY[verify_text.lower()]
        try:
            if server_side:
                if cert is None:
                    raise EndpointError(
                        f"{self}: a TLS server needs ?cert=FILE (and key=FILE unless the "
                        "cert file holds the key), or pass ssl= to serve()"
                    )
                ctx = _ssl.create_default_context(_ssl.Purpose.CLIENT_AUTH, cafile=ca)
                ctx.load_cert_chain(cert, key, password=self.option("password"))
                if verify is not None:
                    ctx.verify_mode = verify
                elif ca is not None:
                    ctx.verify_mode = _ssl.CERT_REQUIRED
            else:
                ctx = _ssl.create_default_context(_ssl.Purpose.SERVER_AUTH, cafile=ca)
                if cert is not None:
                    ctx.load_cert_chain(cert, key, password=self.option("password"))
                if verify == _ssl.CERT_NONE:
                    ctx.check_hostname = False
                    ctx.verify_mode = _ssl.CERT_NONE
        except (OSError, _ssl.SSLError) as exc:
            raise EndpointError(f"{self}: cannot load TLS files: {exc}") from exc
        return ctx


def parse_endpoint(endpoint: str | Endpoint) -> Endpoint:
    """Parse an endpoint string.

    Accepted forms: ``tcp://host:port``, ``tcp://[::1]:port``, ``unix:///path``
    (everything after ``unix://`` is the path), ``udp://host:port``,
    ``unixgram:///path`` (a Unix datagram socket) and
    ``tls://host:port?cert=FILE&key=FILE&ca=FILE&verify=none|optional|required``.

    Args:
        endpoint: the string (an :class:`Endpoint` is returned unchanged).

    Returns:
        The :class:`Endpoint`.

    Raises:
        EndpointError: the string is not a valid endpoint; the message says why.
    """
    if isinstance(endpoint, Endpoint):
        return endpoint
    if not isinstance(endpoint, str):
        raise EndpointError(f"an endpoint must be a string, not {type(endpoint).__name__}")
    text = endpoint.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise EndpointError(
            f"{endpoint!r}: missing scheme; write tcp://host:port, unix:///path, "
            "udp://host:port or tls://host:port"
        )
    scheme = scheme.lower()
    if scheme not in _SCHEMES:
        raise EndpointError(
            f"{endpoint!r}: unknown scheme {scheme!r} (expected one of {', '.join(_SCHEMES)})"
        )
    if scheme in ("unix", "unixgram"):
        if not rest:
            raise EndpointError(f"{endpoint!r}: missing socket path (write {scheme}:///path)")
        if "\x00" in rest:
            raise EndpointError(f"{endpoint!r}: the socket path contains a NUL byte")
        return Endpoint("unixgram" if scheme == "unixgram" else "unix", path=rest)
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        host = parts.hostname
    except ValueError:
        raise EndpointError(
            f"{endpoint!r}: malformed address (IPv6 addresses go in brackets: "
            f"{scheme}://[::1]:port)"
        ) from None
    netloc = parts.netloc
    if netloc.count(":") > 1 and not netloc.startswith("["):
        raise EndpointError(f"{endpoint!r}: IPv6 addresses go in brackets: {scheme}://[::1]:port")
    try:
        port = parts.port
    except ValueError:
        raw = netloc.rpartition(":")[2]
        if raw.isdigit():
            raise EndpointError(f"{endpoint!r}: port {raw} is out of range (0-65535)") from None
        raise EndpointError(f"{endpoint!r}: the port {raw!r} is not a number") from None
    if parts.path not in ("", "/") or parts.fragment:
        raise EndpointError(f"{endpoint!r}: unexpected path {parts.path!r}")
    if parts.username is not None or parts.password is not None:
        raise EndpointError(f"{endpoint!r}: user info is not allowed")
    if not host:
        raise EndpointError(
            f"{endpoint!r}: missing host (use 127.0.0.1, or 0.0.0.0 / [::] for every interface)"
        )
    if port is None:
        raise EndpointError(f"{endpoint!r}: missing port (use :0 for any free port)")
    options: list[tuple[str, str]] = []
    if parts.query:
        try:
            options = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
        except ValueError as exc:
            raise EndpointError(f"{endpoint!r}: bad query string: {exc}") from exc
    if options and scheme != "tls":
        raise EndpointError(f"{endpoint!r}: {scheme} endpoints take no options")
    for key, value in options:
        if key not in _TLS_OPTIONS:
            raise EndpointError(
                f"{endpoint!r}: unknown tls option {key!r} "
                f"(known: {', '.join(sorted(_TLS_OPTIONS))})"
            )
        if key == "verify" and value.lower() not in _VERIFY:
            raise EndpointError(
                f"{endpoint!r}: verify must be none, optional or required, not {value!r}"
            )
    return Endpoint(scheme, host=host, port=port, options=tuple(options))  # type: ignore[arg-type]
