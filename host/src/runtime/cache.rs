//! Compiled participant code on disk, so that a restart does not recompile:
//! wasmtime's own compile cache (`Config::cache`), in the configured
//! folder.
//!
//! Compiling a component with Cranelift costs far more than loading the
//! machine code it produced. Wasmtime keys an entry by a SHA-256 of the
//! component bytes and everything about the engine that changes the code
//! (wasmtime version, target, settings), so a new component version, or a
//! host upgrade, is a miss and compiles afresh. Entries are written to a
//! temporary file and renamed into place, so hosts sharing a folder never
//! read half an entry; an entry that fails to load is compiled again and
//! replaced; a cache that cannot be written costs a warning, never a load.
//! Entries are zstd-compressed, and a background worker evicts the least
//! used past wasmtime's soft limits (65,536 files, 512 MiB).
//!
//! Loading an entry runs its machine code unchecked, so the folder must be
//! writable only by the operator, as the components themselves are.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The compile cache of a runtime, and how its loads went.
#[derive(Debug)]
pub struct CompileCache {
    cache: wasmtime::Cache,
    dir: PathBuf,
    /// Components loaded through the cache: hits and compilations.
    loads: AtomicU64,
}

impl CompileCache {
    /// The cache in `dir` (created if missing), or `None`, with a warning,
    /// when it cannot be used: the host then compiles every component.
    pub fn open(dir: &Path) -> Option<CompileCache> {
        let opened = std::path::absolute(dir)
            .map_err(wasmtime::Error::from)
            .and_then(|dir| {
                let mut config = wasmtime::CacheConfig::new();
                config.with_directory(&dir);
                Ok(CompileCache {
                    cache: wasmtime::Cache::new(config)?,
                    dir,
                    loads: AtomicU64::new(0),
                })
            });
        match opened {
            Ok(cache) => Some(cache),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "no compile cache; every start compiles");
                None
            }
        }
    }

    /// What `wasmtime::Config::cache` takes: shares the counts of this one.
    pub fn wasmtime(&self) -> wasmtime::Cache {
        self.cache.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Components loaded from the cache without compiling.
    pub fn hits(&self) -> u64 {
        self.cache.cache_hits() as u64
    }

    /// Components compiled (no entry, or one that did not load).
    pub fn compiled(&self) -> u64 {
        self.loads.load(Relaxed).saturating_sub(self.hits())
    }

    /// The component of `bytes`, by `engine`, which must have been built
    /// with [`CompileCache::wasmtime`]: from the cache when it holds it, else
    /// compiled and stored.
    pub fn load(
        &self,
        engine: &wasmtime::Engine,
        bytes: &[u8],
    ) -> wasmtime::Result<wasmtime::component::Component> {
        let hits = self.hits();
        let component = wasmtime::component::Component::new(engine, bytes)?;
        self.loads.fetch_add(1, Relaxed);
        match self.hits() > hits {
            true => {
                tracing::info!(dir = %self.dir.display(), "loaded a compiled component from the cache")
            }
            false => tracing::info!(dir = %self.dir.display(), "compiled a component"),
        }
        Ok(component)
    }
}
