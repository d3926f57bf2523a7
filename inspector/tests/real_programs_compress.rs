//! Compressors, several with threads (xz -T2, zstd -T2, pigz -p 2, bzip2, lz4, gzip,
//! brotli, zip and unzip), natively and with snapshots every 10 ms: each compresses a
//! generated input (half text, half noise) and decompresses it again; the compressed
//! files must be identical byte for byte in every run, and the decompressed data must be
//! the input.
//!
//! A missing program fails the test naming the Debian package; `.ci/run` installs them.

mod common;

use common::real::{mixed_bytes, text, write, Case};
use common::{require_tool, Prog};

const MIB: usize = 1024 * 1024;

/// `tool COMPRESS...` then `tool DECOMPRESS...` (which writes the data to stdout) on a
/// generated `input.bin` of `size` bytes; the data read back must be the input.
fn roundtrip(name: &str, tool: (&str, &str), size: usize, compress: &[&str], decompress: &[&str]) {
    let bin = require_tool(tool.0, tool.1);
    let seed = name.len() as u64;
    let out = Case::new(name)
        .setup(move |d| write(d, "input.bin", mixed_bytes(seed, size)))
        .step(Prog::new(&bin).args(compress))
        .step(Prog::new(&bin).args(decompress))
        .run();
    assert!(
        out.outputs[1].stdout == out.file("input.bin"),
        "{name}: decompressing does not give the input back ({} bytes instead of {size})",
        out.outputs[1].stdout.len()
    );
}

#[test]
fn xz_two_threads() {
    roundtrip(
        "xz -T2",
        ("xz", "xz-utils"),
        2 * MIB,
        &["-T2", "--block-size=1MiB", "-6", "-k", "input.bin"],
        &["-T2", "-d", "-c", "input.bin.xz"],
    );
}

#[test]
fn zstd_two_threads() {
    roundtrip(
        "zstd -T2",
        ("zstd", "zstd"),
        2 * MIB,
        &[
            "-q",
            "-T2",
            "-12",
            "-B1048576",
            "input.bin",
            "-o",
            "input.bin.zst",
        ],
        &["-q", "-T2", "-d", "-c", "input.bin.zst"],
    );
}

#[test]
fn pigz_two_threads() {
    roundtrip(
        "pigz -p 2",
        ("pigz", "pigz"),
        16 * MIB,
        &["-p", "2", "-9", "-k", "input.bin"],
        &["-p", "2", "-d", "-c", "input.bin.gz"],
    );
}

#[test]
fn bzip2() {
    roundtrip(
        "bzip2",
        ("bzip2", "bzip2"),
        4 * MIB,
        &["-k", "-9", "input.bin"],
        &["-d", "-c", "input.bin.bz2"],
    );
}

#[test]
fn lz4() {
    roundtrip(
        "lz4",
        ("lz4", "lz4"),
        16 * MIB,
        &["-q", "-9", "input.bin", "input.bin.lz4"],
        &["-q", "-d", "-c", "input.bin.lz4"],
    );
}

#[test]
fn gzip() {
    roundtrip(
        "gzip",
        ("gzip", "gzip"),
        4 * MIB,
        &["-9", "-k", "input.bin"],
        &["-d", "-c", "input.bin.gz"],
    );
}

#[test]
fn brotli() {
    roundtrip(
        "brotli",
        ("brotli", "brotli"),
        2 * MIB,
        &["-q", "9", "-o", "input.bin.br", "input.bin"],
        &["-d", "-c", "input.bin.br"],
    );
}

#[test]
fn zip_and_unzip() {
    let zip = require_tool("zip", "zip");
    let unzip = require_tool("unzip", "unzip");
    let out = Case::new("zip + unzip")
        .setup(|d| {
            for i in 0..40u64 {
                write(d, &format!("tree/dir{}/file{i}.txt", i % 5), text(i, 2000));
            }
            write(d, "tree/blob.bin", mixed_bytes(7, 2 * MIB));
        })
        .step(Prog::new(&zip).args(["-q", "-X", "-9", "-r", "archive.zip", "tree"]))
        .step(Prog::new(&unzip).args(["-q", "-d", "out", "archive.zip"]))
        .step(Prog::new(&unzip).args(["-t", "archive.zip"]))
        .step(Prog::new(&unzip).args(["-p", "archive.zip", "tree/blob.bin"]))
        .run();
    assert_eq!(
        out.outputs[3].stdout,
        out.file("tree/blob.bin"),
        "unzip -p gives another blob"
    );
    assert_eq!(
        out.file("out/tree/dir3/file8.txt"),
        out.file("tree/dir3/file8.txt"),
        "unzip extracted another file"
    );
    assert!(
        out.stdout(2).contains("No errors detected"),
        "{}",
        out.stdout(2)
    );
}
