//! A real HTTPS server on loopback, for egress tests: a test CA (rcgen), a
//! certificate for [`TEST_HOST`] signed by it, and `node`'s own `https`
//! server using them. Shared with the server's tests (`#[path]`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The name tasks use for the test server (`.test` is reserved, RFC 2606).
pub const TEST_HOST: &str = "egress.nautilus.test";

/// Routes: `/big` answers 1 MiB, `/hold` never answers, `/v1/forecast?…`
/// answers as Open-Meteo does (for `fetch-task`), anything else
/// answers `{"hello":"egress","received":<request body bytes>,"path":…}`.
const SERVER_JS: &str = r#"'use strict';
const https = require('node:https');
const fs = require('node:fs');
const big = Buffer.alloc(1 << 20, 'x');
const server = https.createServer({ key: fs.readFileSync(process.argv[1]), cert: fs.readFileSync(process.argv[2]) }, (req, res) => {
  let n = 0;
  req.on('data', (c) => { n += c.length; });
  req.on('error', () => {});
  req.on('end', () => {
    if (req.url === '/big') return res.end(big);
    if (req.url === '/hold') return;
    if (req.url.startsWith('/v1/forecast?')) {
      // Open-Meteo's answer, as fetch-task reads it.
      res.setHeader('content-type', 'application/json');
      return res.end(JSON.stringify({ current: { time: '2026-01-01T12:00', temperature_2m: 21.5 } }));
    }
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ hello: 'egress', received: n, path: req.url }));
  });
});
server.on('tlsClientError', () => {});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
process.stdin.on('end', () => process.exit(0)).resume();
"#;

/// The running server; killed on drop.
pub struct HttpsServer {
    child: Child,
    pub port: u16,
    /// The test CA's certificate (PEM).
    pub ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl HttpsServer {
    /// Makes the CA and a certificate for [`TEST_HOST`] and starts the server.
    pub fn start() -> Self {
        Self::start_for(&[TEST_HOST])
    }

    /// Makes the CA and a certificate for `names` and starts the server.
    pub fn start_for(names: &[&str]) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "nautilus egress test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&leaf_key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
            .unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_path = write("ca.pem", ca.pem());
        let key = write("key.pem", leaf_key.serialize_pem());
        let cert = write("cert.pem", leaf.pem());
        let mut child = Command::new("node")
            .arg("-e")
            .arg(SERVER_JS)
            .arg(&key)
            .arg(&cert)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs the test HTTPS server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server printed its port");
        Self {
            child,
            port,
            ca: ca_path,
            _dir: dir,
        }
    }

    /// Copies the CA where `dir` is (test CAs must outlive the runner).
    pub fn ca_into(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::copy(&self.ca, &path).unwrap();
        path
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
