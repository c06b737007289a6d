//! Throwaway TLS certificates for a test, made with the `openssl` command-line tool: a CA, a server
//! certificate for `127.0.0.1` / `localhost` and a client certificate, all signed by that CA and
//! valid for two days. Nothing is trusted system-wide: a client trusts them only when handed
//! [`TlsFiles::ca_pem`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use tempfile::TempDir;

/// The generated files (PEM). Cheap to clone; the directory is removed when the last clone is
/// dropped.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    _dir: Arc<TempDir>,
}

impl TlsFiles {
    /// Generates a CA, a server and a client certificate (P-256 keys) in a fresh temp dir.
    /// Panics with openssl's output when a step fails.
    pub fn generate() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tls-harness-")
            .tempdir()
            .expect("create temp dir for certificates");
        let path = |name: &str| dir.path().join(name);
        new_key(
            dir.path(),
            "ca.key",
            "ca.crt",
            "/CN=cache-layer test CA",
            &[
                "-x509",
                "-days",
                "2",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        issue(
            dir.path(),
            "server",
            "/CN=127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        );
        issue(
            dir.path(),
            "client",
            "/CN=cache-layer test client",
            "extendedKeyUsage=clientAuth\n",
        );
        TlsFiles {
            ca_cert: path("ca.crt"),
            server_cert: path("server.crt"),
            server_key: path("server.key"),
            client_cert: path("client.crt"),
            client_key: path("client.key"),
            _dir: Arc::new(dir),
        }
    }

    /// The CA certificate (PEM), for `tls_root_ca`.
    pub fn ca_pem(&self) -> Vec<u8> {
        read(&self.ca_cert)
    }

    /// The client certificate (PEM), for `tls_client_auth`.
    pub fn client_cert_pem(&self) -> Vec<u8> {
        read(&self.client_cert)
    }

    /// The client's private key (PEM), for `tls_client_auth`.
    pub fn client_key_pem(&self) -> Vec<u8> {
        read(&self.client_key)
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A key and a certificate `<name>.key` / `<name>.crt` signed by `ca.crt`.
fn issue(dir: &Path, name: &str, subject: &str, extensions: &str) {
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{extensions}"),
    )
    .expect("write certificate extensions");
    let (key, csr, crt) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    new_key(dir, &key, &csr, subject, &[]);
    let serial = format!("0x{:016x}", super::random_u64() >> 1);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-out",
            &crt,
            "-extfile",
            &ext.display().to_string(),
        ],
    );
}

/// A new P-256 key (unencrypted) in `key` and `openssl req` of it for `subject` into `out` (with
/// `extra`: `-x509` makes `out` a self-signed certificate, else it is a signing request).
fn new_key(dir: &Path, key: &str, out: &str, subject: &str, extra: &[&str]) {
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key,
        "-out",
        out,
        "-subj",
        subject,
    ];
    args.extend_from_slice(extra);
    openssl(dir, &args);
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("run openssl (install it, e.g. `apt-get install openssl`; scripts/test.sh does): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
