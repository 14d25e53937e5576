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
    ///
    /// Masking reads the text, not a parse of it, so that it holds for URLs no parser accepts:
    /// a password with unencoded `/`, `?`, `#` or `@` in it, a URL cut short after the
    /// password, an unparsable port. Everything between `://` and the last `@` after its first
    /// `:` is masked, and so is the value of every query parameter whose name holds `password`
    /// (`password`, `sslpassword` …), `pass` or `pwd`. Where the text is ambiguous, more is
    /// masked rather than less; `scrub` then removes any copy of a secret left elsewhere.
    pub fn redacted(&self) -> String {
        let masked = mask(&self.0);
        // The scheme is never a secret: a password equal to it (`postgres`) leaves it readable.
        match masked.split_once(':') {
            Some((scheme, rest)) if self.scheme().is_some() => {
                format!("{scheme}:{}", self.scrub(rest))
            }
            _ => self.scrub(&masked),
        }
    }

    /// `text` (a driver's message about this URL, say) with every secret of this URL in it
    /// replaced by `***`: the password and secret query values, raw and percent-decoded.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in secrets(&self.0) {
            // Shorter ones would mask unrelated text; masking already removed them from the URL.
            if secret.chars().count() >= MIN_SCRUBBED && out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }
}

/// The shortest secret `scrub` looks for elsewhere in a text.
const MIN_SCRUBBED: usize = 3;

/// The query parameters that carry secrets.
fn is_secret_key(key: &str) -> bool {
    let key = percent_decode(key).to_ascii_lowercase();
    let key = key.trim();
    key.contains("password") || key == "pass" || key == "pwd"
}

/// The user-info part of a `scheme://` URL: the text from `://` to the last `@`, and the rest.
fn split_user_info(raw: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = raw.split_once("://")?;
    match rest.rfind('@') {
        Some(at) => Some((scheme, &rest[..at], &rest[at + 1..])),
        None => Some((scheme, "", rest)),
    }
}

/// `user`, `password` and the rest of a URL without `://` that has user info: the text before
/// the first `:`, up to the last `@`, and after it.
fn schemeless_user_info(raw: &str) -> Option<(&str, &str, &str)> {
    if raw.contains("://") {
        return None;
    }
    let at = raw.rfind('@')?;
    let (user, password) = raw[..at].split_once(':')?;
    Some((user, password, &raw[at + 1..]))
}

/// The URL with the password and secret query values replaced by `***`.
fn mask(raw: &str) -> String {
    let Some((scheme, user_info, rest)) = split_user_info(raw) else {
        // No `scheme://`: `sqlite:file.db`, or `user:password@host/db` with the scheme left out.
        if let Some((user, _password, host)) = schemeless_user_info(raw) {
            return format!("{user}:{MASK}@{}", mask_query(host));
        }
        return mask_query(raw);
    };
    let mut out = format!("{scheme}://");
    if let Some((user, _password)) = user_info.split_once(':') {
        out.push_str(&format!("{user}:{MASK}@"));
        out.push_str(&mask_query(rest));
        return out;
    }
    if raw.contains('@') {
        // A user name alone, or an `@` further on (in a query value): no password before it.
        let (_, whole) = raw.split_once("://").expect("split_user_info found it");
        out.push_str(&mask_query(whole));
        return out;
    }
    // No `@`: `host:port/…`, or a URL cut short after `user:password`. A port is digits; anything
    // else after the authority's `:` may be a password, and so may whatever follows it.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if let Some((host, port)) = rest[..authority_end].split_once(':')
        && !port.chars().all(|c| c.is_ascii_digit())
    {
        out.push_str(&format!("{host}:{MASK}"));
        return out;
    }
    out.push_str(&mask_query(rest));
    out
}

/// Masks the value of every secret parameter: from its `=` to the next `&` that starts another
/// `key=` (an `&` inside the value does not end it), or the end.
fn mask_query(text: &str) -> String {
    let Some(q) = text.find('?') else {
        return text.to_owned();
    };
    let (head, query) = text.split_at(q + 1);
    let mut out = head.to_owned();
    let mut masking = false;
    for (i, piece) in query.split('&').enumerate() {
        let key = piece.split_once('=').map(|(k, _)| k);
        let starts_param = key.is_some_and(is_param_name);
        if i > 0 {
            if masking && !starts_param {
                continue; // still the secret's value
            }
            out.push('&');
        }
        masking = false;
        match piece.split_once('=') {
            Some((key, _)) if is_secret_key(key) => {
                out.push_str(&format!("{key}={MASK}"));
                masking = true;
            }
            _ => out.push_str(piece),
        }
    }
    out
}

/// Where a secret's value ends: at the next `&` that starts another `key=`, or the end.
fn value_end(value: &str) -> usize {
    value
        .match_indices('&')
        .find(|(i, _)| {
            value[i + 1..]
                .split_once('=')
                .is_some_and(|(key, _)| is_param_name(key))
        })
        .map_or(value.len(), |(i, _)| i)
}

/// A query parameter's name as drivers write them: letters, digits, `_`, `-`, `.` (and their
/// percent-encodings).
fn is_param_name(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '%'))
}

/// Every secret the URL may hold, raw and percent-decoded, and the pieces of each between URL
/// delimiters: the user-info password, and the values of secret query parameters (read from
/// any `?` or `&` in the text, to miss none).
fn secrets(raw: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some((_, password, _)) = schemeless_user_info(raw) {
        found.push(password.to_owned());
    }
    if let Some((_, user_info, rest)) = split_user_info(raw) {
        if let Some((_, password)) = user_info.split_once(':') {
            found.push(password.to_owned());
        } else if user_info.is_empty() {
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            if let Some((_, port)) = rest[..authority_end].split_once(':')
                && !port.chars().all(|c| c.is_ascii_digit())
            {
                found.push(rest[rest.find(':').map_or(0, |c| c + 1)..].to_owned());
            }
        }
    }
    for (start, _) in raw.match_indices(['?', '&']) {
        let param = &raw[start + 1..];
        if let Some((key, value)) = param.split_once('=')
            && is_secret_key(key)
        {
            found.push(value[..value_end(value)].to_owned());
        }
    }
    let decoded: Vec<String> = found
        .iter()
        .flat_map(|s| [percent_decode(s), form_decode(s)])
        .collect();
    found.extend(decoded);
    // A parser's message may quote any piece of a secret it read as something else: a query
    // key, a path, a port.
    let pieces: Vec<String> = found
        .iter()
        .flat_map(|s| s.split(['/', '?', '#', '&', '=', ';', '@', ':']))
        .map(str::to_owned)
        .collect();
    found.extend(pieces);
    found.retain(|s| !s.is_empty() && s != MASK);
    // Longest first, so that a secret containing another is replaced whole.
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found.dedup();
    found
}

/// `%XX` decoded, `+` kept (as in a URL's user info).
fn percent_decode(text: &str) -> String {
    form_decode(&text.replace('+', "%2B"))
}

/// `%XX` decoded and `+` read as a space (as in a query string).
fn form_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("k={}", text.replace('&', "%26")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
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
