//! Read-your-writes tokens through HTTP: taken from a request's header or cookie, given to its
//! scope's read sessions; the scope's commit tokens set on the response, in the same place.

use crate::ReadToken;

/// Between tokens of several binds in one header or cookie value (a cookie value may hold no
/// space or comma).
const SEPARATOR: char = '~';

/// Where a layer carries read tokens: the app picks a header or a cookie, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokenCarrier {
    Header(String),
    Cookie(String),
}

impl TokenCarrier {
    /// The header a request carries the tokens in (`cookie` for a cookie).
    pub(crate) fn request_header(&self) -> &str {
        match self {
            Self::Header(name) => name,
            Self::Cookie(_) => "cookie",
        }
    }

    /// The tokens in a request, given the values of its [`request_header`](Self::request_header);
    /// a value that is no token is ignored.
    pub(crate) fn read<'a>(&self, values: impl Iterator<Item = &'a str>) -> Vec<ReadToken> {
        let mut tokens = Vec::new();
        for value in values {
            let carried = match self {
                Self::Header(_) => Some(value),
                Self::Cookie(name) => cookie(value, name),
            };
            let parsed = carried
                .into_iter()
                .flat_map(|v| v.split(SEPARATOR))
                .filter_map(|t| t.parse::<ReadToken>().ok());
            tokens.extend(parsed);
        }
        tokens
    }

    /// The response header, and its value, that hand `tokens` to the client.
    pub(crate) fn write(&self, tokens: &[ReadToken]) -> (&str, String) {
        let value = tokens
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(&SEPARATOR.to_string());
        match self {
            Self::Header(name) => (name, value),
            Self::Cookie(name) => (
                "set-cookie",
                format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax"),
            ),
        }
    }
}

/// The tokens a response hands on: one per bind, the later of what the request brought and what
/// it wrote.
pub(crate) fn merged(given: Vec<ReadToken>, written: Vec<ReadToken>) -> Vec<ReadToken> {
    let mut tokens: Vec<ReadToken> = Vec::with_capacity(given.len() + written.len());
    for token in given.into_iter().chain(written) {
        match tokens.iter_mut().find(|t| t.bind() == token.bind()) {
            Some(kept) => *kept = kept.clone().later(token),
            None => tokens.push(token),
        }
    }
    tokens
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then(|| value.trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_travel_in_headers_and_cookies() {
        let tokens: Vec<ReadToken> = vec![
            "main.1.0/16".parse().unwrap(),
            "db.0.0-1-4".parse().unwrap(),
        ];
        let header = TokenCarrier::Header("x-read-token".into());
        let (name, value) = header.write(&tokens);
        assert_eq!(
            (name, value.as_str()),
            ("x-read-token", "main.1.0/16~db.0.0-1-4")
        );
        assert_eq!(header.read([value.as_str()].into_iter()), tokens);
        let cookie = TokenCarrier::Cookie("rt".into());
        let (name, set) = cookie.write(&tokens[..1]);
        assert_eq!(name, "set-cookie");
        assert!(set.starts_with("rt=main.1.0/16;"), "{set}");
        let back = cookie.read(["a=b; rt=main.1.0/16; c=d"].into_iter());
        assert_eq!(back, tokens[..1]);
        assert!(cookie.read(["rt=garbage"].into_iter()).is_empty());
    }

    #[test]
    fn a_response_keeps_the_tokens_of_binds_it_did_not_write() {
        let parse = |t: &str| t.parse::<ReadToken>().unwrap();
        let given = vec![parse("main.1.0/16"), parse("db.0.0-1-4")];
        let written = vec![parse("main.1.0/20")];
        assert_eq!(
            merged(given, written),
            vec![parse("main.1.0/20"), parse("db.0.0-1-4")],
            "main's newer token replaces the old; db's stays"
        );
        let stale = vec![parse("main.1.0/10")];
        assert_eq!(
            merged(vec![parse("main.1.0/20")], stale),
            vec![parse("main.1.0/20")],
            "never an older position than the client had"
        );
    }
}
