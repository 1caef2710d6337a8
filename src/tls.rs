//! TLS for the game server: the `[tls]` config section, loading the server's
//! certificate and key into a rustls [`ServerConfig`], generating a
//! development CA plus server certificate on first start, and building client
//! configs that trust exactly one CA file.
//!
//! Every config built here uses the ring crypto provider explicitly
//! ([`rustls::crypto::ring::default_provider`]) and allows TLS 1.3 and
//! TLS 1.2, so nothing depends on a process-wide default provider.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
    SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, InvalidDnsNameError, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use serde::Deserialize;

/// Common name of the generated development CA.
pub const DEV_CA_COMMON_NAME: &str = "gameserver dev CA";

/// Common name of the generated development server certificate.
const DEV_SERVER_COMMON_NAME: &str = "gameserver dev server";

/// DNS names the development server certificate is valid for.
const DEV_DNS_NAMES: &[&str] = &["localhost"];

/// IP addresses the development server certificate is valid for.
const DEV_IP_ADDRS: &[std::net::IpAddr] = &[
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
];

/// How long generated development certificates stay valid (about ten years).
const DEV_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// How far into the past `notBefore` is set, to tolerate small clock skew.
const DEV_CERT_BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);

/// The protocol versions every config built here allows, preferred first.
const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The config section `[tls]`.
///
/// Every field is optional in the file (missing fields take the
/// [`Default`] values documented per field); unknown fields are rejected.
/// Relative paths are resolved against the process's working directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Whether connections use TLS. Default `true`: plaintext only where
    /// the config says `enabled = false` explicitly. [`server_config`] does
    /// not look at this flag; the caller decides whether to call it.
    pub enabled: bool,
    /// PEM file with the server's certificate chain, leaf first.
    /// Default `certs/server.pem`.
    pub cert_path: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    /// Default `certs/server.key`.
    pub key_path: PathBuf,
    /// PEM file with the CA certificate(s) clients trust; where the
    /// development CA is written. Default `certs/ca.pem`. The development
    /// CA's key goes next to it, see [`TlsConfig::ca_key_path`].
    pub ca_path: PathBuf,
    /// When both `cert_path` and `key_path` are missing, generate a
    /// development CA and server certificate there. Default `true`.
    pub generate_dev_certs: bool,
    /// Absolute deadline for a TLS handshake, in milliseconds. Only carried
    /// here; the server driver enforces it. Default `5000`.
    pub handshake_timeout_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cert_path: PathBuf::from("certs/server.pem"),
            key_path: PathBuf::from("certs/server.key"),
            ca_path: PathBuf::from("certs/ca.pem"),
            generate_dev_certs: true,
            handshake_timeout_ms: 5000,
        }
    }
}

impl TlsConfig {
    /// Where the development CA's private key lives: `ca_path` with its
    /// extension replaced by `key` (`certs/ca.pem` -> `certs/ca.key`).
    pub fn ca_key_path(&self) -> PathBuf {
        self.ca_path.with_extension("key")
    }

    /// `handshake_timeout_ms` as a [`Duration`].
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// Everything that can go wrong loading or generating TLS material. Every
/// variant about a file names that file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file that must exist does not.
    #[error("TLS file {path} does not exist")]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// Exactly one of the certificate and the key exists. Nothing is
    /// generated in that case, so a real certificate is never replaced.
    #[error(
        "TLS file {missing} does not exist but {present} does; refusing to generate a \
         development certificate over it (restore the missing file, or remove both)"
    )]
    IncompletePair {
        /// The file that is missing.
        missing: PathBuf,
        /// The file that exists.
        present: PathBuf,
    },
    /// A file exists (or may exist) but could not be read.
    #[error("cannot read TLS file {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: io::Error,
    },
    /// A file contains a PEM section that does not decode.
    #[error("TLS file {path} holds malformed PEM: {source}")]
    MalformedPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser reported.
        #[source]
        source: io::Error,
    },
    /// A PEM file holds no `CERTIFICATE` section.
    #[error("no certificate found in PEM file {path}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file holds no private key section.
    #[error("no private key found in PEM file {path}")]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the certificate chain and key (unsupported key type,
    /// key does not match the leaf certificate, ...).
    #[error("rustls rejected certificate {cert_path} with key {key_path}: {source}")]
    Rejected {
        /// The certificate chain file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
        /// What rustls reported.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused a certificate from a CA file as a trust anchor.
    #[error("rustls rejected CA certificate in {path}: {source}")]
    BadCaCertificate {
        /// The CA file.
        path: PathBuf,
        /// What rustls reported.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the protocol versions for the crypto provider. Does
    /// not happen with the ring provider and TLS 1.2/1.3; kept so that the
    /// builder's error is reported instead of panicking.
    #[error("cannot build TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    /// Generating the development certificate destined for `path` failed.
    #[error("generating development certificate for {path} failed: {source}")]
    Generate {
        /// The file the certificate was meant for.
        path: PathBuf,
        /// What rcgen reported.
        #[source]
        source: rcgen::Error,
    },
    /// Development certificates were not generated because a file they
    /// would be written to already exists. Nothing was written.
    #[error(
        "refusing to generate development certificates: {path} already exists \
         (remove it, or set [tls] generate_dev_certs = false)"
    )]
    WouldOverwrite {
        /// The existing file.
        path: PathBuf,
    },
    /// Two of the files development certificates are written to are the
    /// same path (for example `cert_path == key_path`).
    #[error("cannot generate development certificates: {path} is configured for two files")]
    ConflictingPaths {
        /// The path used twice.
        path: PathBuf,
    },
    /// Creating a directory or writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why writing failed.
        #[source]
        source: io::Error,
    },
    /// A host name is neither a valid DNS name nor an IP address.
    #[error("invalid TLS server name {name:?}: {source}")]
    InvalidServerName {
        /// The rejected host name.
        name: String,
        /// What the parser reported.
        #[source]
        source: InvalidDnsNameError,
    },
}

/// The files [`generate_dev_certs`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCertFiles {
    /// The development CA certificate (the `ca_path`).
    pub ca_cert: PathBuf,
    /// The development CA private key, mode 0600 on Unix.
    pub ca_key: PathBuf,
    /// The server certificate chain: server certificate then CA (the `cert_path`).
    pub cert: PathBuf,
    /// The server private key, mode 0600 on Unix (the `key_path`).
    pub key: PathBuf,
}

/// Loads the server's rustls config from `cfg.cert_path` and `cfg.key_path`.
///
/// When both files are missing and `cfg.generate_dev_certs` is set, first
/// generates a development CA and a server certificate for `localhost`,
/// `127.0.0.1` and `::1` with [`generate_dev_certs`]. When both are missing
/// and generation is off, fails with [`TlsError::Missing`]. When exactly one
/// is missing, fails with [`TlsError::IncompletePair`] and writes nothing.
///
/// The config uses the ring provider, allows TLS 1.3 and 1.2, and asks for
/// no client certificates. It does not look at `cfg.enabled`.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_exists = exists(&cfg.cert_path)?;
    let key_exists = exists(&cfg.key_path)?;
    match (cert_exists, key_exists) {
        (true, true) => {}
        (false, false) if cfg.generate_dev_certs => {
            generate_dev_certs(cfg)?;
        }
        (false, false) => {
            return Err(TlsError::Missing {
                path: cfg.cert_path.clone(),
            })
        }
        (true, false) => {
            return Err(TlsError::IncompletePair {
                missing: cfg.key_path.clone(),
                present: cfg.cert_path.clone(),
            })
        }
        (false, true) => {
            return Err(TlsError::IncompletePair {
                missing: cfg.cert_path.clone(),
                present: cfg.key_path.clone(),
            })
        }
    }

    let chain = load_certs(&cfg.cert_path)?;
    let key = load_key(&cfg.key_path)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rejected {
            cert_path: cfg.cert_path.clone(),
            key_path: cfg.key_path.clone(),
            source,
        })?;
    Ok(Arc::new(config))
}

/// Builds a client config that trusts exactly the CA certificates in the PEM
/// file `ca_pem` (no system roots), using the ring provider with TLS 1.3 and
/// 1.2 and no client certificate.
///
/// Fails if the file is missing or unreadable, holds no certificate, or
/// holds a certificate rustls refuses as a trust anchor.
pub fn client_config_trusting(ca_pem: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_versions(ca_pem, PROTOCOL_VERSIONS)
}

/// Generates a fresh development CA (CN [`DEV_CA_COMMON_NAME`]) and a server
/// certificate signed by it for `localhost`, `127.0.0.1` and `::1`, and writes
/// them to the paths in `cfg`:
///
/// - `ca_path`: the CA certificate (what clients trust);
/// - [`TlsConfig::ca_key_path`]: the CA key, mode 0600;
/// - `cert_path`: the server certificate followed by the CA certificate;
/// - `key_path`: the server key, mode 0600.
///
/// Parent directories are created. Never overwrites: if any of the four
/// files exists, fails with [`TlsError::WouldOverwrite`] before writing
/// anything. If a write fails, the files this call already created are
/// removed (best effort). The CA may only issue certificates for the names
/// above (X.509 name constraints). Logs the paths (never key material) with
/// `tracing::info!`. Certificates are valid from a day ago for about ten years.
pub fn generate_dev_certs(cfg: &TlsConfig) -> Result<DevCertFiles, TlsError> {
    let files = DevCertFiles {
        ca_cert: cfg.ca_path.clone(),
        ca_key: cfg.ca_key_path(),
        cert: cfg.cert_path.clone(),
        key: cfg.key_path.clone(),
    };
    let all = [&files.ca_cert, &files.ca_key, &files.cert, &files.key];
    for (i, a) in all.iter().enumerate() {
        if all[i + 1..].contains(a) {
            return Err(TlsError::ConflictingPaths { path: (*a).clone() });
        }
    }
    for path in all {
        if exists_or_dangling(path)? {
            return Err(TlsError::WouldOverwrite { path: path.clone() });
        }
    }

    // Everything is generated in memory first, so a generation failure
    // leaves no files behind.
    let generate_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Generate { path, source }
    };

    let ca_key = KeyPair::generate().map_err(generate_err(&files.ca_cert))?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, DEV_CA_COMMON_NAME);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut permitted: Vec<GeneralSubtree> = DEV_DNS_NAMES
        .iter()
        .map(|name| GeneralSubtree::DnsName((*name).to_owned()))
        .collect();
    permitted.extend(DEV_IP_ADDRS.iter().map(|ip| {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(*ip, prefix))
    }));
    ca_params.name_constraints = Some(NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: Vec::new(),
    });
    set_validity(&mut ca_params);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(generate_err(&files.ca_cert))?;

    let server_key = KeyPair::generate().map_err(generate_err(&files.cert))?;
    let mut sans = Vec::new();
    for name in DEV_DNS_NAMES {
        let dns = (*name).try_into().map_err(generate_err(&files.cert))?;
        sans.push(SanType::DnsName(dns));
    }
    sans.extend(DEV_IP_ADDRS.iter().map(|ip| SanType::IpAddress(*ip)));
    let mut server_params = CertificateParams::default();
    server_params.distinguished_name = DistinguishedName::new();
    server_params
        .distinguished_name
        .push(DnType::CommonName, DEV_SERVER_COMMON_NAME);
    server_params.subject_alt_names = sans;
    server_params.is_ca = IsCa::ExplicitNoCa;
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    set_validity(&mut server_params);
    let server_cert = server_params
        .signed_by(&server_key, &ca_cert, &ca_key)
        .map_err(generate_err(&files.cert))?;

    let ca_pem = ca_cert.pem();
    let chain_pem = format!("{}{}", server_cert.pem(), ca_pem);
    let writes: [(&Path, String, bool); 4] = [
        (&files.ca_key, ca_key.serialize_pem(), true),
        (&files.ca_cert, ca_pem, false),
        (&files.key, server_key.serialize_pem(), true),
        (&files.cert, chain_pem, false),
    ];
    let mut created: Vec<&Path> = Vec::new();
    for (path, contents, secret) in &writes {
        if let Err(err) = write_new(path, contents.as_bytes(), *secret) {
            for done in created {
                // Best effort: the original error is the one worth reporting.
                let _ = fs::remove_file(done);
            }
            return Err(err);
        }
        created.push(path);
    }

    tracing::info!(
        ca_cert = %files.ca_cert.display(),
        ca_key = %files.ca_key.display(),
        cert = %files.cert.display(),
        key = %files.key.display(),
        "generated a development CA and server certificate (for localhost, 127.0.0.1, ::1 only; \
         not for production); clients must trust the CA certificate"
    );
    Ok(files)
}

/// Turns a host as a client would type it into a rustls server name: a DNS
/// name (`"localhost"`) or an IP address (`"127.0.0.1"`, `"::1"`, also
/// `"[::1]"`). Fails with [`TlsError::InvalidServerName`] otherwise.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_owned()).map_err(|source| TlsError::InvalidServerName {
        name: host.to_owned(),
        source,
    })
}

/// The crypto provider every config here is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config trusting `ca_pem`, limited to `versions`.
fn client_config_with_versions(
    ca_pem: &Path,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_root_store(ca_pem)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A root store with every certificate in `path`.
fn load_root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|source| TlsError::BadCaCertificate {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(roots)
}

/// Whether `path` exists; an error other than "not found" (for example a
/// parent directory we may not search) is reported, not taken as "missing".
fn exists(path: &Path) -> Result<bool, TlsError> {
    path.try_exists().map_err(|source| TlsError::Unreadable {
        path: path.to_path_buf(),
        source,
    })
}

/// Like [`exists`], but a dangling symlink also counts as existing, so we
/// never write through one.
fn exists_or_dangling(path: &Path) -> Result<bool, TlsError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(TlsError::Unreadable {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads a whole file, mapping "not found" to [`TlsError::Missing`].
fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            TlsError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            TlsError::Unreadable {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Every certificate in the PEM file `path`, in file order; at least one.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::MalformedPem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in the PEM file `path`.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(path)?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|source| TlsError::MalformedPem {
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        })
}

/// Creates `path` (which must not exist) and its parent directory and writes
/// `contents`; `secret` files get mode 0600 on Unix.
fn write_new(path: &Path, contents: &[u8], secret: bool) -> Result<(), TlsError> {
    use std::io::Write as _;

    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(write_err(parent))?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(write_err(path))?;
    #[cfg(unix)]
    if secret {
        // The umask can only have removed bits; make the mode exactly 0600.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(write_err(path))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents).map_err(write_err(path))?;
    file.sync_all().map_err(write_err(path))?;
    Ok(())
}

/// Sets generated certificates' validity: from a day ago until about ten
/// years from now. A clock before 1970 counts as 1970.
fn set_validity(params: &mut CertificateParams) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    params.not_before = epoch + now.saturating_sub(DEV_CERT_BACKDATE);
    params.not_after = epoch + now.saturating_add(DEV_CERT_VALIDITY);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ProtocolVersion, ServerConnection};
    use std::io::{Read, Write};

    /// A config whose four files live in `dir/certs`.
    fn cfg_in(dir: &Path) -> TlsConfig {
        TlsConfig {
            cert_path: dir.join("certs/server.pem"),
            key_path: dir.join("certs/server.key"),
            ca_path: dir.join("certs/ca.pem"),
            ..TlsConfig::default()
        }
    }

    /// Moves every pending TLS byte from `from` to `to` through a `Vec`;
    /// returns how many bytes moved.
    fn transfer<A, B>(
        from: &mut rustls::ConnectionCommon<A>,
        to: &mut rustls::ConnectionCommon<B>,
    ) -> Result<usize, rustls::Error> {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets()?;
        }
        Ok(buf.len())
    }

    /// Pumps bytes both ways until neither side has anything to send.
    /// Returns the client's error if it fails; a server-side error panics
    /// (no test here expects the server to fail).
    fn pump(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), rustls::Error> {
        for _ in 0..64 {
            let c2s = transfer(client, server);
            let c2s = c2s.unwrap_or_else(|e| panic!("server failed: {e}"));
            let s2c = transfer(server, client)?;
            if c2s == 0 && s2c == 0 {
                return Ok(());
            }
        }
        panic!("handshake did not settle");
    }

    /// Connects `client` to `server` for `name`; returns both connections
    /// after the handshake, or the client's error.
    fn handshake(
        server: &Arc<ServerConfig>,
        client: &Arc<ClientConfig>,
        name: &str,
    ) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
        let mut c = ClientConnection::new(client.clone(), server_name(name).unwrap()).unwrap();
        let mut s = ServerConnection::new(server.clone()).unwrap();
        pump(&mut c, &mut s)?;
        assert!(!c.is_handshaking());
        assert!(!s.is_handshaking());
        Ok((c, s))
    }

    /// Reads all plaintext currently buffered in a connection.
    fn read_plain(reader: &mut rustls::Reader<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read failed: {e}"),
            }
        }
        out
    }

    /// Full handshake for `name`, checks the version, then data both ways.
    fn round_trip(
        server: &Arc<ServerConfig>,
        client: &Arc<ClientConfig>,
        name: &str,
        version: ProtocolVersion,
    ) {
        let (mut c, mut s) = handshake(server, client, name).unwrap();
        assert_eq!(c.protocol_version(), Some(version));
        assert_eq!(s.protocol_version(), Some(version));

        c.writer().write_all(b"hello from client").unwrap();
        pump(&mut c, &mut s).unwrap();
        assert_eq!(read_plain(&mut s.reader()), b"hello from client");

        s.writer().write_all(b"hello from server").unwrap();
        pump(&mut c, &mut s).unwrap();
        assert_eq!(read_plain(&mut c.reader()), b"hello from server");
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn defaults_and_parsing() {
        let d = TlsConfig::default();
        assert!(d.enabled);
        assert!(d.generate_dev_certs);
        assert_eq!(d.cert_path, Path::new("certs/server.pem"));
        assert_eq!(d.key_path, Path::new("certs/server.key"));
        assert_eq!(d.ca_path, Path::new("certs/ca.pem"));
        assert_eq!(d.ca_key_path(), Path::new("certs/ca.key"));
        assert_eq!(d.handshake_timeout(), Duration::from_millis(5000));

        let empty: TlsConfig = toml::from_str("").unwrap();
        assert_eq!(empty, d);
        let off: TlsConfig = toml::from_str("enabled = false\ncert_path = \"/x.pem\"").unwrap();
        assert!(!off.enabled);
        assert_eq!(off.cert_path, Path::new("/x.pem"));
        assert_eq!(off.key_path, d.key_path);
        assert!(toml::from_str::<TlsConfig>("enable = false").is_err());
    }

    #[test]
    fn generates_on_first_call_and_not_again() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg_in(dir.path());
        server_config(&cfg).unwrap();

        let paths = [
            cfg.ca_path.clone(),
            cfg.ca_key_path(),
            cfg.cert_path.clone(),
            cfg.key_path.clone(),
        ];
        for p in &paths {
            assert!(p.is_file(), "{} missing", p.display());
        }
        #[cfg(unix)]
        {
            assert_eq!(mode(&cfg.key_path), 0o600);
            assert_eq!(mode(&cfg.ca_key_path()), 0o600);
        }
        // The chain is leaf then CA; the CA file holds the CA alone.
        let chain = load_certs(&cfg.cert_path).unwrap();
        let ca = load_certs(&cfg.ca_path).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(ca.len(), 1);
        assert_eq!(chain[1], ca[0]);

        let before: Vec<Vec<u8>> = paths.iter().map(|p| fs::read(p).unwrap()).collect();
        server_config(&cfg).unwrap();
        let after: Vec<Vec<u8>> = paths.iter().map(|p| fs::read(p).unwrap()).collect();
        assert_eq!(before, after);
    }

    #[test]
    fn generate_dev_certs_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg_in(dir.path());
        let files = generate_dev_certs(&cfg).unwrap();
        assert_eq!(files.ca_key, cfg.ca_key_path());
        let before = fs::read(&cfg.cert_path).unwrap();
        match generate_dev_certs(&cfg) {
            Err(TlsError::WouldOverwrite { path }) => assert_eq!(path, cfg.ca_path),
            other => panic!("expected WouldOverwrite, got {other:?}"),
        }
        assert_eq!(fs::read(&cfg.cert_path).unwrap(), before);

        // Leftover CA files alone also block generation, and nothing is written.
        fs::remove_file(&cfg.cert_path).unwrap();
        fs::remove_file(&cfg.key_path).unwrap();
        assert!(matches!(
            server_config(&cfg),
            Err(TlsError::WouldOverwrite { .. })
        ));
        assert!(!cfg.cert_path.exists());
        assert!(!cfg.key_path.exists());
    }

    #[test]
    fn conflicting_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = cfg_in(dir.path());
        cfg.key_path = cfg.cert_path.clone();
        assert!(matches!(
            server_config(&cfg),
            Err(TlsError::ConflictingPaths { .. })
        ));
        let mut cfg = cfg_in(dir.path());
        cfg.ca_path = dir.path().join("certs/ca.key");
        assert!(matches!(
            generate_dev_certs(&cfg),
            Err(TlsError::ConflictingPaths { .. })
        ));
        assert!(!dir.path().join("certs").exists());
    }

    #[test]
    fn one_of_cert_and_key_missing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg_in(dir.path());
        generate_dev_certs(&cfg).unwrap();

        let key = fs::read(&cfg.key_path).unwrap();
        fs::remove_file(&cfg.key_path).unwrap();
        let cert = fs::read(&cfg.cert_path).unwrap();
        match server_config(&cfg) {
            Err(err @ TlsError::IncompletePair { .. }) => {
                let TlsError::IncompletePair { missing, present } = &err else {
                    unreachable!()
                };
                assert_eq!(missing, &cfg.key_path);
                assert_eq!(present, &cfg.cert_path);
                assert!(err.to_string().contains("server.key"), "{err}");
            }
            other => panic!("expected IncompletePair, got {other:?}"),
        }
        // Nothing was regenerated.
        assert!(!cfg.key_path.exists());
        assert_eq!(fs::read(&cfg.cert_path).unwrap(), cert);

        fs::write(&cfg.key_path, key).unwrap();
        fs::remove_file(&cfg.cert_path).unwrap();
        match server_config(&cfg) {
            Err(TlsError::IncompletePair { missing, present }) => {
                assert_eq!(missing, cfg.cert_path);
                assert_eq!(present, cfg.key_path);
            }
            other => panic!("expected IncompletePair, got {other:?}"),
        }
        assert!(!cfg.cert_path.exists());
    }

    #[test]
    fn both_missing_without_generation_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TlsConfig {
            generate_dev_certs: false,
            ..cfg_in(dir.path())
        };
        match server_config(&cfg) {
            Err(TlsError::Missing { path }) => assert_eq!(path, cfg.cert_path),
            other => panic!("expected Missing, got {other:?}"),
        }
        assert!(!dir.path().join("certs").exists());
        match client_config_trusting(&cfg.ca_path) {
            Err(TlsError::Missing { path }) => assert_eq!(path, cfg.ca_path),
            other => panic!("expected Missing, got {other:?}"),
        }
    }

    #[test]
    fn tls13_handshake_and_data_for_localhost_and_loopback_ips() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg_in(dir.path());
        let server = server_config(&cfg).unwrap();
        let client = client_config_trusting(&cfg.ca_path).unwrap();
        for name in ["localhost", "127.0.0.1", "::1"] {
            round_trip(&server, &client, name, ProtocolVersion::TLSv1_3);
        }
    }

    #[test]
    fn tls12_handshake_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg_in(dir.path());
        let server = server_config(&cfg).unwrap();
        let client = client_config_with_versions(&cfg.ca_path, &[&rustls::version::TLS12]).unwrap();
        for name in ["localhost", "127.0.0.1"] {
            round_trip(&server, &client, name, ProtocolVersion::TLSv1_2);
        }
    }

    #[test]
    fn name_not_in_certificate_fails() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg_in(dir.path());
        let server = server_config(&cfg).unwrap();
        let client = client_config_trusting(&cfg.ca_path).unwrap();
        match handshake(&server, &client, "example.com") {
            Err(rustls::Error::InvalidCertificate(_)) => {}
            other => panic!("expected certificate error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn client_trusting_another_ca_fails() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let cfg_a = cfg_in(a.path());
        let cfg_b = cfg_in(b.path());
        let server = server_config(&cfg_a).unwrap();
        generate_dev_certs(&cfg_b).unwrap();
        let client = client_config_trusting(&cfg_b.ca_path).unwrap();
        match handshake(&server, &client, "localhost") {
            // Both dev CAs have the same subject, so webpki may find the
            // other CA by name and then fail its signature check.
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
            )) => {}
            other => panic!("expected a chain error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn dev_ca_cannot_vouch_for_other_names() {
        // The generated CA carries name constraints: a leaf it signs for a
        // public name is refused even when the client asks for that name.
        // The same kind of leaf for "localhost" is the control.
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg_in(dir.path());
        generate_dev_certs(&cfg).unwrap();
        let ca_key = KeyPair::from_pem(&fs::read_to_string(cfg.ca_key_path()).unwrap()).unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, DEV_CA_COMMON_NAME);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        // Same subject and key as the CA on disk, so leaves chain to it.
        let issuer = ca_params.self_signed(&ca_key).unwrap();
        let client = client_config_trusting(&cfg.ca_path).unwrap();

        let outcome = |name: &str| {
            let leaf_key = KeyPair::generate().unwrap();
            let mut leaf_params = CertificateParams::new(vec![name.to_owned()]).unwrap();
            leaf_params.use_authority_key_identifier_extension = true;
            let leaf = leaf_params.signed_by(&leaf_key, &issuer, &ca_key).unwrap();
            let leaf_cfg = TlsConfig {
                cert_path: dir.path().join(format!("{name}.pem")),
                key_path: dir.path().join(format!("{name}.key")),
                ..cfg.clone()
            };
            fs::write(&leaf_cfg.cert_path, leaf.pem()).unwrap();
            fs::write(&leaf_cfg.key_path, leaf_key.serialize_pem()).unwrap();
            let server = server_config(&leaf_cfg).unwrap();
            handshake(&server, &client, name).map(|_| ())
        };

        outcome("localhost").unwrap();
        match outcome("example.com") {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(e))) => {
                assert!(
                    format!("{e:?}").contains("NameConstraintViolation"),
                    "{e:?}"
                );
            }
            other => panic!("expected a name constraint violation, got {other:?}"),
        }
    }

    #[test]
    fn garbage_pem_gives_the_right_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg_in(dir.path());
        generate_dev_certs(&cfg).unwrap();
        let good_key = fs::read(&cfg.key_path).unwrap();

        // Text with no PEM sections at all.
        fs::write(&cfg.cert_path, "this is not a certificate\n").unwrap();
        match server_config(&cfg) {
            Err(TlsError::NoCertificate { path }) => assert_eq!(path, cfg.cert_path),
            other => panic!("expected NoCertificate, got {other:?}"),
        }
        fs::write(&cfg.ca_path, "garbage").unwrap();
        match client_config_trusting(&cfg.ca_path) {
            Err(TlsError::NoCertificate { path }) => assert_eq!(path, cfg.ca_path),
            other => panic!("expected NoCertificate, got {other:?}"),
        }

        // A certificate section whose body is not base64.
        fs::write(
            &cfg.cert_path,
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        match server_config(&cfg) {
            Err(TlsError::MalformedPem { path, .. }) => assert_eq!(path, cfg.cert_path),
            other => panic!("expected MalformedPem, got {other:?}"),
        }

        // A well-formed certificate section holding garbage DER.
        fs::write(
            &cfg.cert_path,
            "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        match server_config(&cfg) {
            Err(TlsError::Rejected { cert_path, .. }) => assert_eq!(cert_path, cfg.cert_path),
            other => panic!("expected Rejected, got {other:?}"),
        }

        // A key file with only a certificate in it.
        let other_dir = tempfile::tempdir().unwrap();
        let other = cfg_in(other_dir.path());
        generate_dev_certs(&other).unwrap();
        fs::copy(&other.cert_path, &cfg.cert_path).unwrap();
        fs::copy(&other.ca_path, &cfg.key_path).unwrap();
        match server_config(&cfg) {
            Err(TlsError::NoPrivateKey { path }) => assert_eq!(path, cfg.key_path),
            other => panic!("expected NoPrivateKey, got {other:?}"),
        }

        // A key that does not belong to the certificate.
        fs::write(&cfg.key_path, &good_key).unwrap();
        match server_config(&cfg) {
            Err(TlsError::Rejected { key_path, .. }) => assert_eq!(key_path, cfg.key_path),
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("localhost").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]").unwrap(),
            ServerName::IpAddress(_)
        ));
        match server_name("not a host!") {
            Err(TlsError::InvalidServerName { name, .. }) => assert_eq!(name, "not a host!"),
            other => panic!("expected InvalidServerName, got {other:?}"),
        }
    }

    #[cfg(unix)]
    #[test]
    fn unreadable_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg_in(dir.path());
        generate_dev_certs(&cfg).unwrap();
        // A directory where a file is expected cannot be read as one.
        fs::remove_file(&cfg.ca_path).unwrap();
        fs::create_dir(&cfg.ca_path).unwrap();
        match client_config_trusting(&cfg.ca_path) {
            Err(TlsError::Unreadable { path, .. }) => assert_eq!(path, cfg.ca_path),
            other => panic!("expected Unreadable, got {other:?}"),
        }
    }
}
