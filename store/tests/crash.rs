//! A writer killed with SIGKILL at random moments leaves a store that verifies and
//! whose every published version restores byte for byte.

mod common;

#[test]
fn kill_9_of_a_writer_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("store");
    common::crash::kill_writer(target.to_str().unwrap(), 11, 12, 1);
}
