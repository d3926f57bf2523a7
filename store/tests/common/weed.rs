//! A real S3 server for the tests (`memshadow_weed`: SeaweedFS's `weed mini` on
//! loopback, telemetry off) in a temporary directory, killed on drop. A test that
//! needs it fails, naming the package, when `weed` is missing.

pub const ACCESS_KEY: &str = "memshadowtest";
pub const SECRET_KEY: &str = "memshadowtestsecret";

pub struct Weed {
    server: memshadow_weed::Weed,
    _dir: tempfile::TempDir,
}

impl Weed {
    /// Starts the server and sets the AWS_* variables for the store (and the children
    /// this test starts).
    pub fn start() -> Weed {
        let dir = tempfile::tempdir().unwrap();
        let server = memshadow_weed::Weed::start(dir.path(), "memshadow", ACCESS_KEY, SECRET_KEY)
            .unwrap_or_else(|e| panic!("{e}"));
        server.set_env();
        Weed { server, _dir: dir }
    }

    pub fn target(&self, prefix: &str) -> String {
        self.server.target(prefix)
    }
}
