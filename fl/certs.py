"""Key material for a secured Flower federation: a private CA, the SuperLink's TLS certificate, and
one authentication key pair per SuperNode.

What each party receives decides the layout: the coordinator keeps ``ca.key`` and the SuperLink
files; every hospital gets ``ca.crt`` (to verify the SuperLink) and only its own
``supernodes/<name>`` private key; the coordinator registers each ``<name>.pub``. SuperNode keys
follow what the installed Flower (1.42) loads: EC on a NIST curve (SECP384R1, as Flower generates),
the private key in OpenSSH format (``load_ssh_private_key``) and the public key as an OpenSSH line
(``flwr supernode register`` reads it with ``load_ssh_public_key``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel

#: a SuperNode name becomes a file name and a CLI argument: letters, digits, '.', '_', '-'
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_RE = re.compile(rf"^(?=.{{1,253}}$){LABEL}(\.{LABEL})*$")
VALID_DAYS = 365


class SuperNodeKeys(BaseModel):
    name: str
    private_key: Path
    public_key: Path


class FederationCerts(BaseModel):
    """Paths of everything ``generate_federation_certs`` wrote."""

    out_dir: Path
    host: str
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    supernodes: list[SuperNodeKeys]

    def supernode(self, name: str) -> SuperNodeKeys:
        for keys in self.supernodes:
            if keys.name == name:
                return keys
        raise KeyError(f"no SuperNode key named {name!r} in {self.out_dir}")


def validate_names(supernodes: list[str]) -> list[str]:
    """Filesystem-safe, unique, at least one; raises ValueError naming the offender."""
    if not supernodes:
        raise ValueError("at least one SuperNode name is needed")
    for name in supernodes:
        if not NAME_RE.match(name) or name in (".", ".."):
            raise ValueError(
                f"bad SuperNode name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
    duplicates = sorted({n for n in supernodes if supernodes.count(n) > 1})
    if duplicates:
        raise ValueError(f"SuperNode names must be unique, repeated: {', '.join(duplicates)}")
    return supernodes


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not HOST_RE.match(host):
            raise ValueError(f"bad SuperLink host {host!r}: give an IP address or a DNS name") from None
        return x509.DNSName(host)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Private keys are created 0600 from the start, never readable by others even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    encoding, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, pkcs8, serialization.NoEncryption())


def _certificate(subject: str, public_key, issuer: str, signer, extensions: list, days: int) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew between machines
        .not_valid_after(now + dt.timedelta(days=days))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def _write_all(stage: Path, supernodes: list[str], host: str) -> None:
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = "FedAgentBench federation CA"
    ca = _certificate(
        ca_name, ca_key.public_key(), ca_name, ca_key,
        [(x509.BasicConstraints(ca=True, path_length=0), True),
         (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                        key_encipherment=False, data_encipherment=False, key_agreement=False,
                        encipher_only=False, decipher_only=False), True),
         (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)],
        days=VALID_DAYS,
    )  # fmt: skip
    server_key = ec.generate_private_key(ec.SECP384R1())
    local = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    names = [_host_name(host)] + [n for n in local if n != _host_name(host)]
    server = _certificate(
        host, server_key.public_key(), ca_name, ca_key,
        [(x509.SubjectAlternativeName(names), False),
         (x509.BasicConstraints(ca=False, path_length=None), True),
         (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
         (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)],
        days=VALID_DAYS,
    )  # fmt: skip
    _write(stage / "ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    _write(stage / "ca.key", _pem_key(ca_key), private=True)
    _write(stage / "superlink.crt", server.public_bytes(serialization.Encoding.PEM))
    _write(stage / "superlink.key", _pem_key(server_key), private=True)
    (stage / "supernodes").mkdir()
    for name in supernodes:
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write(stage / "supernodes" / name, private, private=True)
        _write(stage / "supernodes" / f"{name}.pub", public + f" {name}\n".encode())


def generate_federation_certs(
    out_dir: str | Path, supernodes: list[str], host: str = "127.0.0.1", force: bool = False
) -> FederationCerts:
    """Write a CA, a SuperLink certificate for ``host`` (plus localhost/127.0.0.1) and one key pair
    per SuperNode into ``out_dir``.

    Everything is written into a staging folder next to ``out_dir`` and renamed into place, so a
    failure never leaves half a federation's keys; an existing ``out_dir`` is only replaced with
    ``force`` (ValueError otherwise). The folder is 0700 like a ~/.ssh: it holds the CA key."""
    supernodes = validate_names(list(supernodes))
    _host_name(host)
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not force:
        raise ValueError(f"{out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old: Path | None = None
    try:
        _write_all(stage, supernodes, host)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / "previous")
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if old is not None and (old / "previous").exists() and not out.exists():
            (old / "previous").rename(out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return FederationCerts(
        out_dir=out,
        host=host,
        ca_cert=out / "ca.crt",
        ca_key=out / "ca.key",
        server_cert=out / "superlink.crt",
        server_key=out / "superlink.key",
        supernodes=[
            SuperNodeKeys(name=n, private_key=out / "supernodes" / n, public_key=out / "supernodes" / f"{n}.pub")
            for n in supernodes
        ],
    )
