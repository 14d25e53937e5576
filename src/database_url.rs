use std::fmt;

use serde::Deserialize;

/// A database URL whose password never shows in `Debug` or `Display`.
///
/// Printing a `DatabaseUrl` (and so any config, error or log line holding one) masks the password in
/// the user-info part and in `password`-like query parameters: `postgres://app:***@db/prod`.
/// [`DatabaseUrl::expose`] gives the real URL to the code that connects.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

const MASK: &str = "***";

impl DatabaseUrl {
    /// Wraps a URL such as `postgres://user:pass@host/db`, `mysql://…` or `sqlite::memory:`.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the code that connects. Never log this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The scheme: what comes before the first `:`, lowercased (`postgres`, `sqlite`, …).
    pub fn scheme(&self) -> Option<String> {
        let (scheme, _) = self.0.split_once(':')?;
        let valid = !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        valid.then(|| scheme.to_ascii_lowercase())
    }

    /// The URL with its password masked: the form every `Debug`, `Display` and error uses.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(url) => redact_parsed(url),
            Err(_) => redact_unparsed(&self.0),
        }
    }
}

fn redact_parsed(mut url: url::Url) -> String {
    if url.password().is_some() {
        // Only fails for URLs that cannot have a password, which this one just had.
        let _ = url.set_password(Some(MASK));
    }
    let secret_params = url.query_pairs().any(|(k, _)| is_secret_key(&k));
    if secret_params {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_key(&k) {
                    MASK.into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key == "pass" || key == "pwd"
}

/// A URL the `url` crate rejects may still carry `user:password@`: mask everything between the
/// scheme's `//` and the last `@` of the authority after the first `:`, and drop the query.
fn redact_unparsed(raw: &str) -> String {
    let raw = raw.split_once('?').map_or(raw, |(head, _)| head);
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or(user_info, |(u, _)| u);
            format!("{scheme}://{user}:{MASK}@{host}{path}")
        }
        None => format!("{scheme}://{authority}{path}"),
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.redacted())
            .finish()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl From<&str> for DatabaseUrl {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> Self {
        Self::new(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_in_user_info_is_masked() {
        let url = DatabaseUrl::new("postgres://app:s3cret@db.example:5432/prod");
        assert_eq!(url.to_string(), "postgres://app:***@db.example:5432/prod");
        assert!(!format!("{url:?}").contains("s3cret"));
    }

    #[test]
    fn password_query_parameter_is_masked() {
        let url = DatabaseUrl::new("postgres://db/prod?user=app&password=s3cret&sslmode=disable");
        let shown = url.to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("sslmode=disable"), "{shown}");
    }

    #[test]
    fn unparseable_url_is_masked_too() {
        let url = DatabaseUrl::new("mysql://app:s3cret@db:notaport/x?password=again");
        let shown = url.to_string();
        assert!(
            !shown.contains("s3cret") && !shown.contains("again"),
            "{shown}"
        );
        assert!(shown.starts_with("mysql://app:***@db"), "{shown}");
    }

    #[test]
    fn url_without_password_is_unchanged() {
        for raw in [
            "sqlite::memory:",
            "sqlite://data/app.db",
            "postgres://app@db/prod",
        ] {
            assert_eq!(DatabaseUrl::new(raw).to_string(), raw);
        }
    }

    #[test]
    fn scheme_is_lowercased_and_validated() {
        assert_eq!(
            DatabaseUrl::new("PostgreS://x").scheme().as_deref(),
            Some("postgres")
        );
        assert_eq!(
            DatabaseUrl::new("sqlite::memory:").scheme().as_deref(),
            Some("sqlite")
        );
        assert_eq!(DatabaseUrl::new("no scheme here").scheme(), None);
        assert_eq!(DatabaseUrl::new("").scheme(), None);
    }
}
