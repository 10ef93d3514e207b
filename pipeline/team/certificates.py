"""TLS for team servers that other machines reach: a small certificate authority of the team
folder and a server certificate for the address the servers listen on.

A bind outside loopback carries passwords and S3 keys over the network, so it is served over
TLS only. ``make team-up TEAM_HOST=<address>`` makes (once, then reuses) a CA and a certificate
for that address signed by it; clients trust the CA file (``ca.pem``: no secret in it, hand it
out with the env files). A lab with its own certificate passes its files instead
(``--cert``/``--key``/``--ca``) and none is made.

    <team dir>/tls/ca.pem        the CA's certificate (clients: MLFLOW_TRACKING_SERVER_CERT_PATH, AWS_CA_BUNDLE)
    <team dir>/tls/ca.key        its private key (0600; signs a new server certificate when the address changes)
    <team dir>/tls/server.pem    the servers' certificate (the address in its subjectAltName) and the CA after it
    <team dir>/tls/server.key    its private key (0600)
    <team dir>/tls/internal*     the servers' own CA and certificate for their gRPC between them (mutual TLS)
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io import write_private

#: Validity of what ``make team-up`` makes: the CA for ten years, a server certificate for one
#: (it is made again, with the same CA, by a ``team-up`` less than 30 days before it expires).
CA_DAYS = 3650
SERVER_DAYS = 365
RENEW_DAYS = 30


@dataclass(frozen=True)
class TLSFiles:
    """The files a TLS server and its clients need."""

    cert: Path  # the server's certificate chain (PEM)
    key: Path  # its private key (PEM)
    ca: Path | None  # what clients trust for it (PEM; None: the system's store)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``): reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _name(host: str):
    """``host`` as a subjectAltName entry: an IP address or a DNS name."""
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_ca(folder: Path, stem: str, title: str, now: datetime.datetime) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, title)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(folder / f"{stem}.key", _key_pem(key))
    (folder / f"{stem}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _is_current(path: Path, host: str, now: datetime.datetime) -> bool:
    """Whether the certificate at ``path`` names ``host`` and is valid for another RENEW_DAYS."""
    from cryptography import x509

    if not path.is_file():
        return False
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return _name(host) in names and certificate.not_valid_after_utc > now + datetime.timedelta(days=RENEW_DAYS)


def _issue(folder: Path, stem: str, host: str, ca: str, title: str, client: bool = False) -> TLSFiles:
    """``folder/<stem>.pem`` (the certificate, then its CA) and ``<stem>.key`` for ``host`` (and
    loopback), signed by the CA ``folder/<ca>.pem`` (made first when missing); kept while current."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(folder / f"{stem}.pem", folder / f"{stem}.key", folder / f"{ca}.pem")
    now = datetime.datetime.now(datetime.UTC)
    if not files.ca.is_file() or not (folder / f"{ca}.key").is_file():
        _make_ca(folder, ca, title, now)
    if _is_current(files.cert, host, now):
        return files
    ca_cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
    ca_key = serialization.load_pem_private_key((folder / f"{ca}.key").read_bytes(), password=None)
    key = _new_key()
    # Loopback stays in the names: the servers' own checks on this machine go through it too.
    names = list(
        dict.fromkeys([_name(host), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    )
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(files.key, _key_pem(key))
    files.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM) + files.ca.read_bytes())
    return files


def ensure(folder: Path, host: str) -> TLSFiles:
    """The team's CA (made once) and a server certificate for ``host`` signed by it (made again
    when ``host`` changes or it nears its end); return their paths."""
    return _issue(folder, "server", host, "ca", f"ham10000 team CA ({folder.resolve().parent.name})")


def internal(folder: Path) -> TLSFiles:
    """A CA of the servers' own and one certificate it signs for both ends of their internal
    connections (SeaweedFS' gRPC between its gateway and its store): it never leaves the folder,
    so only these processes can talk gRPC to each other."""
    return _issue(folder, "internal", "127.0.0.1", "internal-ca", "ham10000 team servers' internal CA", client=True)


def given(cert: Path, key: Path, ca: Path | None) -> TLSFiles:
    """A lab's own certificate and key (``ca``: what clients should trust for it; None: the
    system's store vouches for it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    for path in (cert, key, *([ca] if ca else [])):
        if not path.is_file():
            raise PipelineError(f"no TLS file at {path}")
    try:
        x509.load_pem_x509_certificates(cert.read_bytes())
        serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise PipelineError(
            f"TLS files {cert} / {key}: not a PEM certificate and unencrypted private key ({error})"
        ) from None
    return TLSFiles(cert.resolve(), key.resolve(), ca.resolve() if ca else None)
