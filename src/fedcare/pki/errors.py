"""Errors raised by provisioning and by the peer-identity check.

Two families: :class:`ProvisioningError` (the operator asked for something the federation folder
cannot do) and :class:`PeerCertificateError` (a connecting party is not a current member of the
federation). Both derive from :class:`~fedcare.core.errors.FedcareError`; malformed inputs and
files raise :class:`ProvisioningConfigError`, a :class:`~fedcare.core.errors.ConfigError`.
"""

from __future__ import annotations

from fedcare.core.errors import ConfigError, FedcareError


class ProvisioningError(FedcareError):
    """A federation folder cannot be created or changed as asked."""


class FederationExistsError(ProvisioningError):
    """The target folder already holds a federation (or anything else): nothing is overwritten."""


class SiteExistsError(ProvisioningError):
    """A site with this name was already issued a kit (revoked names are not reused either)."""


class SiteNotFoundError(ProvisioningError):
    """The federation has no site with this name."""


class CrlError(ProvisioningError):
    """The revocation list is missing, unreadable, or not signed by the federation CA."""


class ProvisioningConfigError(ConfigError):
    """An input (site name, host, port, validity) or a federation/hub/node file is invalid."""


class PeerCertificateError(FedcareError):
    """A peer certificate does not identify a current member of this federation."""


class UnknownCertificate(PeerCertificateError):
    """Not issued by this federation's CA, or not a site certificate (EKU, SAN, CA flag)."""


class ExpiredCertificate(PeerCertificateError):
    """Issued by this federation but outside its validity period (expired or not yet valid)."""


class RevokedCertificate(PeerCertificateError):
    """Issued by this federation to a site, but listed in the federation's CRL."""
