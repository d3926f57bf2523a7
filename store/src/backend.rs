//! Where a store's objects live: one trait, a local directory and an S3 bucket.

use std::fmt;
use std::io;

/// Why a backend operation failed.
#[derive(Debug)]
pub enum BackendError {
    /// No object of that name.
    NotFound(String),
    /// An object of that name exists already (a create-only put).
    Exists(String),
    /// The place cannot be used safely (a symlink, another user's directory...).
    Refused(String),
    /// A local read or write failed.
    Io { what: String, source: io::Error },
    /// The object store answered with an error.
    Remote(String),
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::NotFound(name) => write!(f, "{name} is missing"),
            BackendError::Exists(name) => write!(f, "{name} exists already"),
            BackendError::Refused(why) => write!(f, "{why}"),
            BackendError::Io { what, source } => write!(f, "{what}: {source}"),
            BackendError::Remote(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for BackendError {}

/// A flat namespace of objects, each written whole and atomically.
pub trait Backend: Send {
    /// The whole object.
    fn get(&self, name: &str) -> Result<Vec<u8>, BackendError>;
    /// `len` bytes of the object from `offset` (an error if it is shorter).
    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError>;
    /// Writes a new object, atomically; [`BackendError::Exists`] if the name is taken.
    fn put_new(&self, name: &str, bytes: &[u8]) -> Result<(), BackendError>;
    /// Writes an object, atomically replacing one of the same name.
    fn put_replace(&self, name: &str, bytes: &[u8]) -> Result<(), BackendError>;
    /// Names and sizes of the objects under `dir` (`manifests` or `data`), names in full
    /// (`dir/...`), in no particular order; leftover temporary files too.
    fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, BackendError>;
    /// Removes an object; one already gone is not an error.
    fn delete(&self, name: &str) -> Result<(), BackendError>;
    /// What the user named, for messages.
    fn describe(&self) -> String;
}
