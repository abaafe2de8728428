"""HTTPS settings checked once, before anything binds, instead of failing in every worker.

Each worker's uvicorn builds its own SSLContext from the same files; loading them here first
turns a missing file, a key that does not match the certificate, a wrong password or a cipher
list OpenSSL does not know into one sentence. An encrypted key without a password is refused
before OpenSSL is asked to load it, because OpenSSL would prompt for the pass phrase on the
terminal (in the supervisor, and again in every worker).
"""

from __future__ import annotations

import os
import ssl

from ..config import Config
from ..errors import StartupError


def check_tls(config: Config) -> None:
    """Load the certificate, key and CAs as each worker's uvicorn will; StartupError if they fail."""
    from uvicorn.config import create_ssl_context

    cert = config.ssl_certfile
    assert cert is not None
    key = config.ssl_keyfile or cert
    for flag, path in (
        ("--ssl-certfile", cert),
        ("--ssl-keyfile", config.ssl_keyfile),
        ("--ssl-ca-certs", config.ssl_ca_certs),
    ):
        if path is not None and not os.path.isfile(path):
            option = flag[2:].replace("-", "_")
            raise StartupError(f"{flag} {path} does not exist or is not a file.", option=option)
    encrypted = _is_encrypted(key)
    if encrypted and config.ssl_keyfile_password is None:
        raise StartupError(f"the key {key} is encrypted: pass its password with --ssl-keyfile-password.")
    try:
        create_ssl_context(
            certfile=cert,
            keyfile=config.ssl_keyfile,
            password=config.ssl_keyfile_password,
            ssl_version=config.ssl_version,
            cert_reqs=config.ssl_cert_reqs,
            ca_certs=config.ssl_ca_certs,
            ciphers=config.ssl_ciphers,
        )
    except ssl.SSLError as exc:
        raise StartupError(_problem(config, key, encrypted, exc)) from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise StartupError(
            f"cannot use the TLS settings (--ssl-version {config.ssl_version}?): {reason}."
        ) from None


def _is_encrypted(path: str) -> bool:
    """Whether a PEM private key needs a password (PKCS#8 or the older Proc-Type header)."""
    try:
        with open(path, "rb") as file:
            head = file.read(1 << 16)
    except OSError:
        return False  # the load below says what is wrong
    return b"ENCRYPTED PRIVATE KEY" in head or b"Proc-Type: 4,ENCRYPTED" in head


def _problem(config: Config, key: str, encrypted: bool, exc: ssl.SSLError) -> str:
    reason = str(getattr(exc, "reason", None) or exc)
    cert = config.ssl_certfile
    if reason == "KEY_VALUES_MISMATCH":
        return f"the key in --ssl-keyfile {key} does not match the certificate in --ssl-certfile {cert}."
    if encrypted and not _loads_without_key(config):
        return f"cannot load the certificate {cert}: {reason} (is it a PEM file?)."
    if encrypted:
        return f"cannot decrypt the key {key}: pass the right --ssl-keyfile-password."
    if config.ssl_ciphers and "cipher" in reason.lower():
        return f"--ssl-ciphers {config.ssl_ciphers!r} names no cipher OpenSSL knows."
    if config.ssl_ca_certs and not _loads(config.ssl_ca_certs):
        return f"cannot load --ssl-ca-certs {config.ssl_ca_certs}: {reason} (is it a PEM file?)."
    if _loads_without_key(config) and _holds_a_private_key(key):  # each is fine alone: not a pair
        return (
            f"the key in --ssl-keyfile {key} does not match the certificate in --ssl-certfile {cert} "
            f"(each loads alone; a key of another certificate, or of another type?): {reason}."
        )
    return f"cannot load the certificate {cert} with the key {key}: {reason} (are they PEM files?)."


def _holds_a_private_key(path: str) -> bool:
    """Whether the file holds a PEM private key block (RSA, EC, PKCS#8, ...)."""
    try:
        with open(path, "rb") as file:
            head = file.read(1 << 16)
    except OSError:
        return False
    return b"-----BEGIN " in head and b"PRIVATE KEY-----" in head


def _loads_without_key(config: Config) -> bool:
    """Whether the certificate file alone holds a certificate (to blame the key, not it)."""
    assert config.ssl_certfile is not None
    return _loads(config.ssl_certfile)


def _loads(path: str) -> bool:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError, ValueError):
        return False
    return True
