//! Loading a [`Config`] from a TOML file and the environment, through figment.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::config::{Config, DEFAULT_BIND};
use crate::{Error, Result};

/// The environment variable that gives the `default` bind its URL.
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";

/// The prefix of per-bind environment variables: `DBSCOPE_BINDS__<NAME>__<FIELD>[__<FIELD>]`.
pub const BIND_ENV_PREFIX: &str = "DBSCOPE_BINDS__";

impl Config {
    /// Loads the binds from the environment alone.
    ///
    /// `DATABASE_URL` gives the `default` bind; `DBSCOPE_BINDS__<NAME>__<FIELD>` sets any field of
    /// bind `<name>` (lowercased), `__` separating nested fields:
    ///
    /// ```text
    /// DATABASE_URL=postgres://app@db/main
    /// DBSCOPE_BINDS__ANALYTICS__URL=postgres://app@warehouse/analytics
    /// DBSCOPE_BINDS__ANALYTICS__POOL__MAX_CONNECTIONS=4
    /// DBSCOPE_BINDS__ANALYTICS__POOL__ACQUIRE_TIMEOUT=5s
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a value that does not fit its field; [`ErrorKind::NoBinds`](crate::ErrorKind::NoBinds) when no
    /// variable configures a bind; [`ErrorKind::MissingUrl`](crate::ErrorKind::MissingUrl) when a bind gets options but no URL.
    pub fn from_env() -> Result<Self> {
        Self::from_figment(&env_layers(Figment::new()))
    }

    /// Loads the binds from a TOML file alone.
    ///
    /// The file holds either one bind at the top level (it becomes `default`) or a table per bind:
    ///
    /// ```toml
    /// [binds.default]
    /// url = "postgres://app@db/main"
    ///
    /// [binds.analytics]
    /// url = "postgres://app@warehouse/analytics"
    /// pool = { max_connections = 4, acquire_timeout = "5s" }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::ConfigFile`](crate::ErrorKind::ConfigFile) when the file cannot be read; [`ErrorKind::Config`](crate::ErrorKind::Config) when it is not valid
    /// TOML or a value does not fit; [`ErrorKind::NoBinds`](crate::ErrorKind::NoBinds) and [`ErrorKind::MissingUrl`](crate::ErrorKind::MissingUrl) as for
    /// [`Config::from_env`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_figment(&Figment::from(TomlBinds::open(path.as_ref())?))
    }

    /// Loads the binds from a TOML file, then lets the environment override it.
    ///
    /// Layers, each overriding the one before, field by field: the defaults; the file; then
    /// `DATABASE_URL`; then `DBSCOPE_BINDS__…` variables.
    ///
    /// # Errors
    ///
    /// As [`Config::from_file`] and [`Config::from_env`].
    ///
    /// A bind name of the file with capitals is refused ([`ErrorKind::Config`](crate::ErrorKind::Config)): the
    /// environment's variables name binds in lowercase, and would make another bind beside it.
    pub fn from_file_and_env(path: impl AsRef<Path>) -> Result<Self> {
        let file = TomlBinds::open(path.as_ref())?;
        let config: Self = env_layers(Figment::from(file)).extract()?;
        // The environment's layer lowercases every name: one with capitals is the file's.
        let capitals = |name: &&String| name.chars().any(|c| c.is_ascii_uppercase());
        if let Some(name) = config.binds.keys().find(capitals) {
            return Err(Error::bind_name_case(name));
        }
        config.validated()
    }

    /// Extracts the binds from a figment of your own making, for other layers or formats.
    ///
    /// Binds live under the `binds` key: `binds.<name>.url`, `binds.<name>.pool.max_connections`.
    ///
    /// # Errors
    ///
    /// As [`Config::from_env`].
    pub fn from_figment(figment: &Figment) -> Result<Self> {
        let config: Self = figment.extract()?;
        config.validated()
    }

    /// `self`, if it has binds and each has a URL.
    fn validated(self) -> Result<Self> {
        if self.binds.is_empty() {
            return Err(Error::no_binds());
        }
        if let Some((name, _)) = self.binds.iter().find(|(_, bind)| bind.url.is_none()) {
            return Err(Error::missing_url(name, &url_env_var(name)));
        }
        Ok(self)
    }
}

/// The environment variable that sets bind `name`'s URL.
pub(crate) fn url_env_var(name: &str) -> String {
    if name == DEFAULT_BIND {
        format!("{DATABASE_URL_ENV} or {BIND_ENV_PREFIX}DEFAULT__URL")
    } else {
        format!("{BIND_ENV_PREFIX}{}__URL", name.to_ascii_uppercase())
    }
}

fn env_layers(figment: Figment) -> Figment {
    let database_url = Env::raw()
        .only(&[DATABASE_URL_ENV])
        .map(|_| format!("binds.{DEFAULT_BIND}.url").into());
    let per_bind = Env::raw().filter_map(|key| {
        let rest = strip_prefix_ignore_case(key.as_str(), BIND_ENV_PREFIX)?;
        Some(format!("binds.{}", rest.replace("__", ".")).into())
    });
    figment.merge(database_url).merge(per_bind)
}

fn strip_prefix_ignore_case<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    let head = key.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &key[prefix.len()..])
}

/// A TOML file holding either `[binds.<name>]` tables or one bind at its top level.
struct TomlBinds {
    path: PathBuf,
}

impl TomlBinds {
    fn open(path: &Path) -> Result<Self> {
        // figment skips a missing file silently; a config file the user named must exist.
        std::fs::metadata(path).map_err(|source| Error::config_file(path, source))?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    fn toml(&self) -> figment::providers::Data<Toml> {
        Toml::file_exact(&self.path)
    }
}

impl Provider for TomlBinds {
    fn metadata(&self) -> Metadata {
        self.toml().metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut data = self.toml().data()?;
        for dict in data.values_mut() {
            if !dict.is_empty() && !dict.contains_key("binds") {
                let single = std::mem::take(dict);
                let binds = Dict::from([(DEFAULT_BIND.to_owned(), Value::from(single))]);
                dict.insert("binds".to_owned(), Value::from(binds));
            }
        }
        Ok(data)
    }
}
