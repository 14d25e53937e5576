//! Which check a failed TLS handshake failed, read from the driver's error.

/// The check a TLS handshake failed ([`Error::tls_check`](crate::Error::tls_check)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsCheck {
    /// The server's certificate is not signed by a trusted CA (an unknown issuer, a bad
    /// signature, a revoked certificate …): set the bind's `root_cert` to the CA that signed it.
    UntrustedCertificate,
    /// The server's certificate is trusted but does not name the host connected to
    /// (`verify-full`): connect by a name the certificate lists, or use `verify-ca`.
    HostnameMismatch,
    /// The server's certificate has expired or is not valid yet.
    CertificateExpired,
    /// The server does not support TLS, and the bind's mode requires it.
    NotSupportedByServer,
    /// The server ended the handshake with an alert: it did not accept this client (often: it
    /// wants a client certificate it trusts).
    RejectedByServer,
    /// Another handshake failure (no protocol version or cipher in common, a malformed message
    /// …); the cause is in `source()`.
    Other,
}

/// sqlx's words, in both drivers, when the mode requires TLS and the server offers none.
const SERVER_HAS_NO_TLS: &str = "server does not support TLS";

/// The failed check, if `err` is a TLS failure: rustls's error (carried in an I/O error, as rustls
/// reports it) or sqlx's own TLS error.
pub(super) fn failed_check(err: &sqlx::Error) -> Option<TlsCheck> {
    match err {
        sqlx::Error::Tls(inner) if inner.to_string() == SERVER_HAS_NO_TLS => {
            Some(TlsCheck::NotSupportedByServer)
        }
        sqlx::Error::Tls(_) => Some(TlsCheck::Other),
        sqlx::Error::Io(io) => io.get_ref().and_then(rustls_check),
        _ => None,
    }
}

#[cfg(feature = "tls")]
fn rustls_check(inner: &(dyn std::error::Error + Send + Sync + 'static)) -> Option<TlsCheck> {
    use rustls::{CertificateError as Cert, Error as Rustls};
    let check = match inner.downcast_ref::<Rustls>()? {
        Rustls::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            TlsCheck::HostnameMismatch
        }
        Rustls::InvalidCertificate(
            Cert::Expired
            | Cert::ExpiredContext { .. }
            | Cert::NotValidYet
            | Cert::NotValidYetContext { .. },
        ) => TlsCheck::CertificateExpired,
        Rustls::InvalidCertificate(_) | Rustls::NoCertificatesPresented => {
            TlsCheck::UntrustedCertificate
        }
        Rustls::AlertReceived(_) => TlsCheck::RejectedByServer,
        _ => TlsCheck::Other,
    };
    Some(check)
}

/// Without the `tls` feature no handshake runs, so no I/O error is a handshake's.
#[cfg(not(feature = "tls"))]
fn rustls_check(_: &(dyn std::error::Error + Send + Sync + 'static)) -> Option<TlsCheck> {
    None
}

/// The failed check, and how to fix it.
pub(super) fn advice(check: TlsCheck) -> &'static str {
    match check {
        TlsCheck::UntrustedCertificate => {
            "certificate not trusted (not signed by a CA this bind trusts); set \
             `connect.tls.root_cert` (URL: `sslrootcert`, MySQL `ssl-ca`) to the PEM file of the \
             CA that signed the server's certificate"
        }
        TlsCheck::HostnameMismatch => {
            "host name mismatch (the server's certificate is trusted but does not name the host \
             in the URL); connect by a name or address the certificate lists (its subject \
             alternative names), or use mode `verify-ca` to check the CA alone"
        }
        TlsCheck::CertificateExpired => {
            "certificate expired or not yet valid; renew the server's certificate, or check this \
             machine's clock"
        }
        TlsCheck::NotSupportedByServer => {
            "the server does not support TLS, and this bind's mode requires it; turn TLS on in \
             the server, or set the mode to `prefer` or `disable`"
        }
        TlsCheck::RejectedByServer => {
            "rejected by the server (it ended the handshake with an alert, often because it wants \
             a client certificate it trusts); set `connect.tls.client_cert` and `client_key` \
             (URL: `sslcert`, `sslkey`)"
        }
        TlsCheck::Other => "handshake error; the cause says why",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlx_says_the_server_has_no_tls() {
        let err = sqlx::Error::Tls(SERVER_HAS_NO_TLS.into());
        assert_eq!(failed_check(&err), Some(TlsCheck::NotSupportedByServer));
        let other = sqlx::Error::Tls("Invalid certificate file: ca.pem".into());
        assert_eq!(failed_check(&other), Some(TlsCheck::Other));
    }

    #[test]
    fn plain_io_errors_are_not_tls_failures() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(failed_check(&sqlx::Error::Io(refused)), None);
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        assert_eq!(failed_check(&sqlx::Error::Io(reset)), None);
    }

    #[cfg(feature = "tls")]
    #[test]
    fn rustls_errors_name_their_check() {
        use rustls::{AlertDescription, CertificateError as Cert, Error as Rustls};
        let io =
            |e: Rustls| sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        for (err, check) in [
            (
                Rustls::InvalidCertificate(Cert::UnknownIssuer),
                TlsCheck::UntrustedCertificate,
            ),
            (
                Rustls::InvalidCertificate(Cert::BadSignature),
                TlsCheck::UntrustedCertificate,
            ),
            (
                Rustls::InvalidCertificate(Cert::NotValidForName),
                TlsCheck::HostnameMismatch,
            ),
            (
                Rustls::InvalidCertificate(Cert::Expired),
                TlsCheck::CertificateExpired,
            ),
            (
                Rustls::AlertReceived(AlertDescription::CertificateRequired),
                TlsCheck::RejectedByServer,
            ),
            (Rustls::DecryptError, TlsCheck::Other),
        ] {
            assert_eq!(failed_check(&io(err)), Some(check));
        }
    }
}
