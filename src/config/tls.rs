//! TLS settings of a bind: the mode and the certificate files.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

/// TLS for a PostgreSQL or MySQL/MariaDB bind's connections (`connect.tls` in a config file).
///
/// Each field, when set, wins over the same setting in the URL's query (`sslmode`,
/// `sslrootcert`, `sslcert`, `sslkey`; MySQL's `ssl-mode`, `ssl-ca`, `ssl-cert`, `ssl-key`),
/// whichever layer (file, `DATABASE_URL`, `DBSCOPE_BINDS__…`) each came from; a field left unset
/// leaves the URL's setting, or the driver's default, in place.
///
/// Every mode but `disable` and `prefer`, and every file, needs dbscope's `tls` cargo feature: a
/// build without it refuses them with [`ErrorKind::DriverNotEnabled`](crate::ErrorKind::DriverNotEnabled). SQLite binds have
/// no network connection and refuse any TLS setting with
/// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported). A file that does not exist, or does not hold PEM, is refused
/// when the manager is built, with [`ErrorKind::Config`](crate::ErrorKind::Config) naming the bind and the path.
///
/// ```toml
/// [binds.default]
/// url = "postgres://app@db.example.com/main"
/// connect.tls = { mode = "verify-full", root_cert = "/etc/ssl/db-ca.pem" }
/// ```
///
/// or `DBSCOPE_BINDS__DEFAULT__CONNECT__TLS__MODE=verify-full`,
/// `DBSCOPE_BINDS__DEFAULT__CONNECT__TLS__ROOT_CERT=/etc/ssl/db-ca.pem`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct TlsConfig {
    /// Whether to encrypt, and what to verify. Default: the URL's `sslmode` / `ssl-mode`, else
    /// the driver's default, [`TlsMode::Prefer`].
    pub mode: Option<TlsMode>,
    /// A PEM file of the CA certificates that may sign the server's certificate, trusted besides
    /// the public web roots (libpq's `sslrootcert`, MySQL's `ssl-ca`). Used by `verify-ca` and
    /// `verify-full` only. Default: the URL's, else the public roots alone.
    pub root_cert: Option<PathBuf>,
    /// A PEM file holding the client certificate to present to servers that ask for one
    /// (`sslcert`, `ssl-cert`); set together with `client_key`. Default: the URL's, else none.
    pub client_cert: Option<PathBuf>,
    /// A PEM file holding the private key of `client_cert` (`sslkey`, `ssl-key`), unencrypted.
    /// Default: the URL's, else none.
    pub client_key: Option<PathBuf>,
}

impl TlsConfig {
    /// No field is set.
    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Whether a connection is encrypted, and what of the server's certificate is verified.
///
/// libpq's `sslmode` values; MySQL's `ssl-mode` names are accepted too (any case, `-` or `_`):
/// `disabled`, `preferred`, `required`, `verify_ca`, `verify_identity`.
///
/// | mode          | MySQL             | encrypted                    | verifies |
/// |---------------|-------------------|------------------------------|----------|
/// | `disable`     | `DISABLED`        | never                        | nothing |
/// | `prefer`      | `PREFERRED`       | if the server offers TLS     | nothing |
/// | `require`     | `REQUIRED`        | always, or no connection     | nothing |
/// | `verify-ca`   | `VERIFY_CA`       | always                       | the certificate is signed by a trusted CA |
/// | `verify-full` | `VERIFY_IDENTITY` | always                       | that, and it names the host connected to |
///
/// Only `verify-full` protects against a server impersonating another; `require` guards against
/// eavesdropping only (and unlike libpq's, never verifies, even with a `root_cert`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
#[non_exhaustive]
pub enum TlsMode {
    /// Plain connections only.
    Disable,
    /// TLS when the server supports it, without verifying its certificate; plain otherwise (and
    /// always plain in a build without the `tls` feature).
    Prefer,
    /// TLS or no connection; the certificate is not verified.
    Require,
    /// TLS, with a certificate signed by a trusted CA (`root_cert` or a public root), for any host
    /// name.
    VerifyCa,
    /// TLS, with a trusted certificate that names the host of the URL (a DNS name or an IP
    /// address among its subject alternative names).
    VerifyFull,
}

impl TlsMode {
    /// The libpq name: `disable`, `prefer`, `require`, `verify-ca`, `verify-full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// The mode encrypts or fails: every mode but `disable` and `prefer`.
    pub(crate) fn requires_tls(self) -> bool {
        !matches!(self, Self::Disable | Self::Prefer)
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TlsMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "disable" | "disabled" => Ok(Self::Disable),
            "prefer" | "preferred" => Ok(Self::Prefer),
            "require" | "required" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" | "verify-identity" => Ok(Self::VerifyFull),
            _ => Err(format!(
                "unknown TLS mode {text:?}; use disable, prefer, require, verify-ca or verify-full"
            )),
        }
    }
}

impl TryFrom<String> for TlsMode {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_by_libpq_and_mysql_names() {
        for (text, mode) in [
            ("disable", TlsMode::Disable),
            ("DISABLED", TlsMode::Disable),
            ("prefer", TlsMode::Prefer),
            ("Preferred", TlsMode::Prefer),
            ("require", TlsMode::Require),
            ("REQUIRED", TlsMode::Require),
            ("verify-ca", TlsMode::VerifyCa),
            ("VERIFY_CA", TlsMode::VerifyCa),
            ("verify-full", TlsMode::VerifyFull),
            ("verify_full", TlsMode::VerifyFull),
            ("VERIFY_IDENTITY", TlsMode::VerifyFull),
        ] {
            assert_eq!(text.parse::<TlsMode>(), Ok(mode), "{text}");
        }
        let err = "verify".parse::<TlsMode>().unwrap_err();
        assert!(err.contains("verify-full"), "{err}");
    }

    #[test]
    fn only_disable_and_prefer_allow_plain_connections() {
        let plain: Vec<_> = [
            TlsMode::Disable,
            TlsMode::Prefer,
            TlsMode::Require,
            TlsMode::VerifyCa,
            TlsMode::VerifyFull,
        ]
        .into_iter()
        .filter(|m| !m.requires_tls())
        .collect();
        assert_eq!(plain, [TlsMode::Disable, TlsMode::Prefer]);
    }
}
