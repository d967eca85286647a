//! Compiled participant code on disk, so that a restart does not recompile.
//!
//! Compiling a component with Cranelift costs far more than loading the
//! machine code it produced; the cache keeps that code (wasmtime's
//! serialized form) under
//!
//! ```text
//!  <dir>/<sha256(engine compatibility hash, component bytes)>.cwasm
//! ```
//!
//! so an entry is found only by the same bytes compiled for a compatible
//! engine (same wasmtime version, target and settings): a new component
//! version, or a host upgrade, is a miss and compiles afresh. Entries are
//! written to a temporary file and renamed into place, so hosts sharing a
//! folder never read half an entry. An entry that fails to load (corrupt, or
//! written by an incompatible engine despite its name) is compiled again and
//! replaced. A cache that cannot be written costs a warning, never a load.
//!
//! Loading an entry runs its machine code unchecked, so the folder must be
//! writable only by the operator, as the components themselves are.
//! Entries are never evicted: one per component version ever loaded.

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// Where compiled components are kept, and what happened so far.
#[derive(Debug)]
pub struct CompileCache {
    dir: PathBuf,
    stats: CacheStats,
}

/// Counts of a runtime's component loads.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Loaded from the cache without compiling.
    pub hits: AtomicU64,
    /// Compiled (no entry, or an entry that did not load).
    pub compiled: AtomicU64,
}

impl CompileCache {
    pub fn new(dir: PathBuf) -> CompileCache {
        CompileCache {
            dir,
            stats: CacheStats::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The component of `bytes`: from the cache when it holds it, else
    /// compiled and stored.
    pub fn load(
        &self,
        engine: &wasmtime::Engine,
        bytes: &[u8],
    ) -> wasmtime::Result<wasmtime::component::Component> {
        let path = self
            .dir
            .join(format!("{}.cwasm", entry_name(engine, bytes)));
        if path.exists() {
            // SAFETY: the entry was written by `Component::serialize` of a
            // compatible engine into the operator's cache folder (see the
            // module docs); wasmtime checks the engine compatibility again.
            match unsafe { wasmtime::component::Component::deserialize_file(engine, &path) } {
                Ok(component) => {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(entry = %path.display(), "loaded a compiled component from the cache");
                    return Ok(component);
                }
                Err(e) => {
                    tracing::warn!(entry = %path.display(), error = %e, "unusable cache entry; compiling again");
                }
            }
        }
        let component = wasmtime::component::Component::new(engine, bytes)?;
        self.stats.compiled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(entry = %path.display(), "compiled a component");
        if let Err(e) = component
            .serialize()
            .map_err(std::io::Error::other)
            .and_then(|code| self.store(&path, &code))
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not write the compile cache");
        }
        Ok(component)
    }

    fn store(&self, path: &Path, code: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(code)?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Hex SHA-256 of the engine's compatibility hash and the component bytes.
fn entry_name(engine: &wasmtime::Engine, bytes: &[u8]) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let mut sha = hasher.0;
    sha.update((bytes.len() as u64).to_le_bytes());
    sha.update(bytes);
    crate::hex(&sha.finalize())
}

/// Feeds a `Hash` value into SHA-256, which (unlike `DefaultHasher`) is the
/// same in every build and on every host.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        unreachable!("only the digest is used")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
