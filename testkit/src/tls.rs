//! Certificates made at test time with the `openssl` command (installed by
//! `.ci/brokers.sh`): a CA, a server certificate for `localhost` and
//! `127.0.0.1` and a client certificate, signed by it, plus a second CA
//! that signed nothing (for "the server is not trusted" cases).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory of PEM files, removed when dropped.
#[derive(Debug)]
pub struct TestCerts {
    /// The directory holding them.
    pub dir: PathBuf,
    /// The CA that signed the server and the client certificate.
    pub ca: PathBuf,
    /// A CA that signed neither.
    pub other_ca: PathBuf,
    /// The server's certificate (SAN `localhost`, `127.0.0.1`).
    pub server_cert: PathBuf,
    /// The server's PKCS#8 private key.
    pub server_key: PathBuf,
    /// The client's certificate (extended key usage `clientAuth`).
    pub client_cert: PathBuf,
    /// The client's PKCS#8 private key.
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command runs (Debian package openssl, installed by .ci/brokers.sh)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCerts {
    /// Makes a fresh set under the system's temporary directory.
    pub fn generate() -> Self {
        let dir = std::env::temp_dir().join(crate::support::unique("busline-certs"));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        for ca in ["ca", "other-ca"] {
            openssl(
                &dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=busline test {ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                ],
            );
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        for (who, cn) in [("server", "localhost"), ("client", "busline-client")] {
            openssl(
                &dir,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    &format!("/CN={cn}"),
                    "-keyout",
                    &format!("{who}.key"),
                    "-out",
                    &format!("{who}.csr"),
                ],
            );
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{who}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{who}.ext"),
                    "-out",
                    &format!("{who}.pem"),
                ],
            );
        }
        Self {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            dir,
        }
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
