//! Where a store's connections go and how they are secured.
//!
//! An [`Endpoint`] hands out the redis-rs [`Client`](redis::Client) a new connection is made
//! with:
//!
//! - a node URL (`redis://`, `rediss://`): always the same client;
//! - a Sentinel group (feature `sentinel`): each new connection first asks the sentinels for the
//!   current master (redis-rs checks the answer with `ROLE`), so connections re-made after a
//!   failover go to the promoted replica.
//!
//! TLS (feature `tls`) is redis-rs' rustls support: a `rediss://` URL verifies the server against
//! the system trust store, or against the CA given with [`TlsConfig::root_ca`]; a client
//! certificate is sent when one was given. rustls needs a process-wide crypto provider: the one
//! the application installed, else ring's (installed on first use of a `rediss://` URL).
//!
//! Nothing here does I/O when built: a bad URL or an unreadable certificate is an
//! [`Error::Config`] at build time, an unreachable server an error on use.

use std::fmt;

use crate::Error;

/// TLS settings for `rediss://` connections: a CA to trust instead of the system's, and a client
/// certificate for servers that require one (`tls-auth-clients yes`). PEM encoded.
#[derive(Clone, Default)]
pub(crate) struct TlsConfig {
    /// CA certificate(s) the server's certificate must chain to.
    pub(crate) root_ca: Option<Vec<u8>>,
    /// Client certificate chain and private key.
    pub(crate) client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print keys (or certificates: they are noise in a log).
        f.debug_struct("TlsConfig")
            .field("root_ca", &self.root_ca.as_ref().map(|_| "<set>"))
            .field("client_auth", &self.client_auth.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl TlsConfig {
    /// No custom CA and no client certificate: the system trust store, no client auth.
    pub(crate) fn is_default(&self) -> bool {
        self.root_ca.is_none() && self.client_auth.is_none()
    }

    /// Checks that each PEM holds what it should (redis-rs parses the blocks; an input with no
    /// block at all would silently mean "trust nothing" or "no certificate").
    fn check_pem(&self) -> Result<(), Error> {
        let has_block = |pem: &[u8], label: &str| {
            let marker = format!("-----BEGIN {label}");
            pem.windows(marker.len()).any(|w| w == marker.as_bytes())
        };
        if let Some(ca) = &self.root_ca {
            if !has_block(ca, "CERTIFICATE-----") {
                return Err(Error::Config(
                    "tls_root_ca: no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
                ));
            }
        }
        if let Some((cert, key)) = &self.client_auth {
            if !has_block(cert, "CERTIFICATE-----") {
                return Err(Error::Config(
                    "tls_client_auth: no PEM certificate (-----BEGIN CERTIFICATE-----) found"
                        .into(),
                ));
            }
            if !has_block(key, "") || !String::from_utf8_lossy(key).contains("PRIVATE KEY-----") {
                return Err(Error::Config(
                    "tls_client_auth: no PEM private key (-----BEGIN ... PRIVATE KEY-----) found"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The settings in the form redis-rs takes them.
    #[cfg(feature = "tls")]
    pub(crate) fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client_auth
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.root_ca.clone(),
        }
    }
}

/// Whether `url` asks for TLS (`rediss://`).
pub(crate) fn is_tls_url(url: &str) -> bool {
    url.trim_start()
        .get(..9)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss://"))
}

/// Checks that the URLs and the TLS settings fit together and that this build can speak TLS when
/// asked to; makes sure rustls has a crypto provider.
pub(crate) fn check_tls<S: AsRef<str>>(urls: &[S], tls: &TlsConfig) -> Result<(), Error> {
    tls.check_pem()?;
    let secure = urls.iter().filter(|u| is_tls_url(u.as_ref())).count();
    if secure > 0 && secure < urls.len() {
        return Err(Error::Config(
            "mixed redis:// and rediss:// URLs: use one scheme for every node".into(),
        ));
    }
    if secure == 0 {
        if !tls.is_default() {
            return Err(Error::Config(
                "tls_root_ca / tls_client_auth were given but the URL is not rediss://: \
                 use rediss:// to connect with TLS"
                    .into(),
            ));
        }
        return Ok(());
    }
    #[cfg(feature = "tls")]
    {
        ensure_crypto_provider();
        Ok(())
    }
    #[cfg(not(feature = "tls"))]
    Err(Error::Config(
        "rediss:// URL, but cache-layer was built without its `tls` feature (on by default)".into(),
    ))
}

/// Installs ring's rustls provider unless the application installed one (a provider has to be
/// chosen when both ring and aws-lc-rs are compiled in, e.g. by another dependency).
#[cfg(feature = "tls")]
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another thread installing one is fine: a provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A client for one node: `url` with the TLS settings applied.
pub(crate) fn node_client(url: &str, tls: &TlsConfig) -> Result<redis::Client, Error> {
    check_tls(&[url], tls)?;
    let invalid = |e: redis::RedisError| {
        Error::Config(format!("invalid redis url {:?}: {e}", redact_password(url)))
    };
    #[cfg(feature = "tls")]
    if !tls.is_default() {
        return redis::Client::build_with_tls(url, tls.certificates()).map_err(invalid);
    }
    redis::Client::open(url).map_err(invalid)
}

/// Where new connections go.
// One per store, cloned only when a connection is made: the variants' size difference costs
// nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum Endpoint {
    /// One node, always the same address.
    Node(redis::Client),
    /// The master of a Sentinel group, looked up for every new connection.
    #[cfg(feature = "sentinel")]
    Sentinel(std::sync::Arc<sentinel::SentinelEndpoint>),
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Node(client) => f
                .debug_tuple("Node")
                .field(&client.get_connection_info().addr())
                .finish(),
            #[cfg(feature = "sentinel")]
            Endpoint::Sentinel(sentinel) => f.debug_tuple("Sentinel").field(sentinel).finish(),
        }
    }
}

impl Endpoint {
    /// The client to make the next connection with.
    pub(crate) async fn client(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Endpoint::Node(client) => Ok(client.clone()),
            #[cfg(feature = "sentinel")]
            Endpoint::Sentinel(sentinel) => sentinel.master().await,
        }
    }
}

#[cfg(feature = "sentinel")]
pub(crate) use sentinel::sentinel_endpoint;

#[cfg(feature = "sentinel")]
mod sentinel {
    use std::{fmt, time::Duration};

    use redis::{
        sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
        IntoConnectionInfo,
    };

    use super::{check_tls, is_tls_url, redact_password, TlsConfig};
    use crate::Error;

    /// A Sentinel group's master, as the sentinels report it.
    pub(crate) struct SentinelEndpoint {
        client: tokio::sync::Mutex<SentinelClient>,
        master: String,
        sentinels: usize,
        /// Bound of one lookup (asking the sentinels, checking the master's role): a hung
        /// sentinel must not hold a connection attempt forever.
        lookup_timeout: Duration,
    }

    impl fmt::Debug for SentinelEndpoint {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("SentinelEndpoint")
                .field("master", &self.master)
                .field("sentinels", &self.sentinels)
                .finish_non_exhaustive()
        }
    }

    impl SentinelEndpoint {
        /// A client for the current master.
        pub(crate) async fn master(&self) -> redis::RedisResult<redis::Client> {
            let lookup = async { self.client.lock().await.async_get_client().await };
            match tokio::time::timeout(self.lookup_timeout, lookup).await {
                Ok(result) => result,
                Err(_elapsed) => Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no master {:?} from the sentinels within {:?}",
                        self.master, self.lookup_timeout
                    ),
                ))),
            }
        }
    }

    /// The endpoint for master `master` of the sentinels at `sentinels` (`redis://host:26379`
    /// each; `rediss://` for TLS to the sentinels and the master; a password in a sentinel URL
    /// is the sentinels' own). `auth`: the master's user and password.
    pub(crate) fn sentinel_endpoint(
        sentinels: &[String],
        master: &str,
        auth: Option<&(Option<String>, String)>,
        tls: &TlsConfig,
        lookup_timeout: Duration,
    ) -> Result<SentinelEndpoint, Error> {
        if sentinels.is_empty() {
            return Err(Error::Config(
                "redis_sentinel needs at least one sentinel URL".into(),
            ));
        }
        if master.is_empty() {
            return Err(Error::Config(
                "redis_sentinel needs the master's name".into(),
            ));
        }
        check_tls(sentinels, tls)?;
        let mut addrs = Vec::with_capacity(sentinels.len());
        let mut sentinel_auth = None;
        for url in sentinels {
            let info = url.as_str().into_connection_info().map_err(|e| {
                Error::Config(format!(
                    "invalid sentinel url {:?}: {e}",
                    redact_password(url)
                ))
            })?;
            if let Some(password) = info.redis_settings().password() {
                sentinel_auth.get_or_insert((
                    info.redis_settings().username().map(str::to_owned),
                    password.to_owned(),
                ));
            }
            addrs.push(info.addr().clone());
        }
        let invalid = |e: redis::RedisError| {
            Error::Config(format!("invalid redis sentinel configuration: {e}"))
        };
        let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
            .map_err(invalid)?;
        if let Some((username, password)) = sentinel_auth {
            if let Some(username) = username {
                builder = builder.set_client_to_sentinel_username(username);
            }
            builder = builder.set_client_to_sentinel_password(password);
        }
        if let Some((username, password)) = auth {
            if let Some(username) = username {
                builder = builder.set_client_to_redis_username(username);
            }
            builder = builder.set_client_to_redis_password(password);
        }
        if is_tls_url(&sentinels[0]) {
            builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
            #[cfg(feature = "tls")]
            if !tls.is_default() {
                builder = builder
                    .set_client_to_sentinel_certificates(tls.certificates())
                    .set_client_to_redis_certificates(tls.certificates());
            }
        }
        Ok(SentinelEndpoint {
            client: tokio::sync::Mutex::new(builder.build().map_err(invalid)?),
            master: master.to_owned(),
            sentinels: sentinels.len(),
            lookup_timeout,
        })
    }
}

/// `url` with the password (if any) replaced by `***`, for error messages.
pub(crate) fn redact_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_scheme_is_recognised_case_insensitively() {
        assert!(is_tls_url("rediss://host:6380"));
        assert!(is_tls_url("REDISS://host"));
        assert!(!is_tls_url("redis://host"));
        assert!(!is_tls_url("redis"));
    }

    #[test]
    fn tls_settings_need_a_rediss_url() {
        let tls = TlsConfig {
            root_ca: Some(b"-----BEGIN CERTIFICATE-----\n".to_vec()),
            client_auth: None,
        };
        let err = check_tls(&["redis://127.0.0.1:6379"], &tls).unwrap_err();
        assert!(err.to_string().contains("rediss://"), "{err}");
        let err = check_tls(&["redis://a:1", "rediss://b:2"], &TlsConfig::default()).unwrap_err();
        assert!(err.to_string().contains("mixed"), "{err}");
        assert!(check_tls(&["redis://a:1"], &TlsConfig::default()).is_ok());
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_bad_certificate_is_a_config_error_at_build_time() {
        let tls = TlsConfig {
            root_ca: Some(
                b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".to_vec(),
            ),
            client_auth: None,
        };
        let err = node_client("rediss://127.0.0.1:6380", &tls).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert!(node_client("rediss://127.0.0.1:6380", &TlsConfig::default()).is_ok());
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn rediss_without_the_tls_feature_is_a_config_error() {
        let err = node_client("rediss://127.0.0.1:6380", &TlsConfig::default()).unwrap_err();
        assert!(err.to_string().contains("`tls` feature"), "{err}");
    }

    #[test]
    fn debug_never_prints_keys() {
        let tls = TlsConfig {
            root_ca: None,
            client_auth: Some((b"cert".to_vec(), b"SECRET KEY".to_vec())),
        };
        let printed = format!("{tls:?}");
        assert!(!printed.contains("SECRET"), "{printed}");
    }
}
