//! kill -9 of a writer at random moments, then verify and restore every version.

use std::process::{Child, Command};
use std::time::Duration;

use memshadow_store::Store;

use super::model::{Model, Rng};
use super::restore;

/// Kills the writer if the test fails first.
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the writer on `target` `rounds` times and SIGKILLs it after a random delay
/// (longer for slower backends: `scale`); after each kill the store must verify
/// clean (orphans allowed) and every published version must restore exactly.
pub fn kill_writer(target: &str, seed: u64, rounds: u32, scale: u64) {
    let mut rng = Rng::new(seed);
    let mut published = 0;
    for round in 0..rounds {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_memshadow-store-writer"));
        cmd.args([target, &seed.to_string()]);
        if round % 2 == 1 {
            cmd.args(["--retain", "6"]);
        }
        // Bounded even if the kill never came: the writer stops after this many.
        cmd.args(["--max", "5000"]);
        let mut w = Writer(cmd.spawn().expect("start the writer"));
        std::thread::sleep(Duration::from_millis((20 + rng.below(250)) * scale));
        w.0.kill().unwrap();
        let status = w.0.wait().unwrap();
        assert!(
            status.code().is_none(),
            "the writer exited by itself: {status}"
        );
        drop(w);
        let mut store = Store::open(target).expect("the store opens after a kill");
        let report = store.verify().unwrap();
        assert!(report.ok(), "round {round}: {:?}", report.damage);
        eprintln!(
            "round {round}: {} versions, orphans {:?}",
            store.version_numbers().unwrap().len(),
            report.orphans
        );
        let versions = store.version_numbers().unwrap();
        let Some(&newest) = versions.last() else {
            continue;
        };
        let mut m = Model::new();
        for v in 1..=newest {
            m.step(seed, v);
            if versions.contains(&v) {
                assert_eq!(
                    restore(&mut store, v).unwrap(),
                    m.image(),
                    "round {round} v{v}"
                );
            }
        }
        published = newest;
    }
    assert!(
        published > 3,
        "the writer published only {published} versions"
    );
}
