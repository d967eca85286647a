//! The deploy folder: one participant per `NAME.wasm` + `NAME.toml`.
//!
//! ```text
//!  participants/
//!    wallet.wasm     the component
//!    wallet.toml     store = "ledger"
//!                    prefix = "wallet:"
//!                    sha256 = "<hex of wallet.wasm>"   (optional)
//!                    reuse_steps = 100                 (optional, as [participants.NAME])
//!                    [limits]                          (optional, as [participants.NAME.limits])
//!                    call_time_ms = 50
//! ```
//!
//! Deploys write the manifest first, then the component, each to a
//! temporary file renamed into place; a manifest written by a deploy names
//! the SHA-256 of its component. A reader that finds a manifest whose
//! `sha256` does not match the component (or no component yet) is looking
//! at a deploy in progress and waits for the next scan, so no host ever
//! runs a component with another version's manifest. Removal deletes the
//! component first, then the manifest. Several hosts may share one folder:
//! each loads what the others deployed on its next scan.
//!
//! Beside the current entries, the folder keeps each participant's recent
//! versions and what was done to it, for rollbacks and for
//! `GET /v1/participants/{name}`:
//!
//! ```text
//!  participants/
//!    .history/wallet/
//!      <sha256 hex>.wasm     a version deployed (at most deploy.versions_max,
//!      <sha256 hex>.toml     the current one included), and its manifest
//!      log.jsonl             one line per deploy, rollback and removal:
//!                            {"at_ms","action","digest","store","prefix","by","host"}
//! ```
//!
//! A rollback writes the version before the current one as the current
//! entry, as a deploy of it would, so hosts load it the same way. The
//! versions are a stack: a deploy pushes one, a rollback pops the current
//! one (so rolling back twice goes two versions back), a removal empties
//! it. The log is appended to (one short line, so that hosts sharing the
//! folder do not tear each other's) and cut back to its last
//! [`HISTORY_MAX`] lines once it holds twice that many.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::DeployError;
use crate::hex;
use crate::runtime::{LimitOverrides, REUSE_AUDIT_DEFAULT, ReusePolicy};

/// Longest participant name: it becomes a file name.
pub const NAME_BYTES_MAX: usize = 64;

/// What the names of participants look like (see [`check_name`]), as a
/// regular expression, for the API's schema.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$";

/// Lines of a participant's history kept (see the module essay).
pub const HISTORY_MAX: usize = 100;

/// The folder, inside the deploy folder, of every participant's kept
/// versions and history.
const HISTORY_DIR: &str = ".history";

/// One line of a participant's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub action: HistoryAction,
    /// The version made current (`sha256:<hex>`); for a removal, the one
    /// removed.
    pub digest: String,
    pub store: String,
    pub prefix: String,
    /// The name of the token that did it, when the server has tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The host that did it.
    #[serde(default)]
    pub host: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HistoryAction {
    Deploy,
    Rollback,
    Remove,
}

/// `NAME.toml`: where a folder participant lives and what it may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub store: String,
    /// The prefix its keys are named relative to, or
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// the prefixes its keys, named in full, each start with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    /// SHA-256 (hex) of the component this manifest was written for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Steps one instance may serve (see `runtime::reuse`); 0: a fresh
    /// instance per step.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reuse_steps: u32,
    /// The fraction of reused steps audited on a fresh instance.
    #[serde(default = "default_reuse_audit")]
    pub reuse_audit: f64,
    /// Overrides of the global `[limits]`, key by key.
    #[serde(default, skip_serializing_if = "LimitOverrides::is_empty")]
    pub limits: LimitOverrides,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `reuse_audit` when not given.
pub fn default_reuse_audit() -> f64 {
    REUSE_AUDIT_DEFAULT
}

impl Manifest {
    /// The participant's reuse settings.
    pub fn reuse(&self) -> ReusePolicy {
        ReusePolicy {
            steps: self.reuse_steps,
            audit: self.reuse_audit,
        }
    }
}

/// The deploy folder, and what was last seen in it.
#[derive(Debug)]
pub struct Folder {
    path: PathBuf,
    seen: Mutex<BTreeMap<String, Stamp>>,
}

/// Sizes and modification times of an entry's two files: what tells a
/// changed entry from an unchanged one without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    component: Option<(u64, SystemTime)>,
    manifest: Option<(u64, SystemTime)>,
}

/// Why an entry could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryError {
    /// A deploy is writing it: look again later.
    InProgress,
    /// It is broken, for this reason.
    Broken(String),
}

/// Participant names become file names: ASCII letters, digits, `-`, `_`.
pub fn check_name(name: &str) -> Result<(), DeployError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(DeployError::BadName(name.to_owned()))
    }
}

impl Folder {
    pub fn new(path: PathBuf) -> Folder {
        Folder {
            path,
            seen: Mutex::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, name: &str, extension: &str) -> PathBuf {
        self.path.join(format!("{name}.{extension}"))
    }

    /// Every entry in the folder (a name with a component, a manifest or
    /// both), with its stamp. A folder that does not exist is empty.
    pub fn entries(&self) -> std::io::Result<BTreeMap<String, Stamp>> {
        let mut names = std::collections::BTreeSet::new();
        let listing = match std::fs::read_dir(&self.path) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e),
        };
        for entry in listing {
            let path = entry?.path();
            let (Some(stem), Some(ext)) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            if (ext == "wasm" || ext == "toml") && check_name(stem).is_ok() {
                names.insert(stem.to_owned());
            }
        }
        Ok(names
            .into_iter()
            .map(|name| {
                let stamp = self.stamp(&name);
                (name, stamp)
            })
            .collect())
    }

    fn stamp(&self, name: &str) -> Stamp {
        let of = |path: PathBuf| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.len(), meta.modified().ok()?))
        };
        Stamp {
            component: of(self.file(name, "wasm")),
            manifest: of(self.file(name, "toml")),
        }
    }

    /// Whether `name` looks different from when it was last loaded.
    pub fn changed(&self, name: &str, stamp: &Stamp) -> bool {
        self.seen.lock().expect("folder lock").get(name) != Some(stamp)
    }

    /// Remembers `name` as loaded (or failed) at `stamp`.
    pub fn seen(&self, name: &str, stamp: Stamp) {
        self.seen
            .lock()
            .expect("folder lock")
            .insert(name.to_owned(), stamp);
    }

    /// Reads an entry's manifest and component.
    pub fn read(&self, name: &str) -> Result<(Manifest, Vec<u8>), EntryError> {
        let broken = |what: &str, e: &dyn std::fmt::Display| {
            EntryError::Broken(format!("{}: {what}: {e}", self.path.display()))
        };
        let text = std::fs::read_to_string(self.file(name, "toml"))
            .map_err(|e| broken(&format!("cannot read {name}.toml"), &e))?;
        let manifest: Manifest =
            toml::from_str(&text).map_err(|e| broken(&format!("{name}.toml"), &e))?;
        let bytes = match std::fs::read(self.file(name, "wasm")) {
            Ok(bytes) => bytes,
            Err(_) if manifest.sha256.is_some() => return Err(EntryError::InProgress),
            Err(e) => return Err(broken(&format!("cannot read {name}.wasm"), &e)),
        };
        match &manifest.sha256 {
            Some(sha) if *sha != hex(&Sha256::digest(&bytes)) => Err(EntryError::InProgress),
            _ => Ok((manifest, bytes)),
        }
    }

    /// Writes an entry for a deploy: the manifest (naming the component's
    /// digest), then the component, each atomically; and remembers it as
    /// seen, so that the next scan does not load it again.
    pub fn write(&self, name: &str, manifest: &Manifest, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.path)?;
        let manifest = Manifest {
            sha256: Some(hex(&Sha256::digest(bytes))),
            ..manifest.clone()
        };
        let text = toml::to_string(&manifest).map_err(std::io::Error::other)?;
        self.replace(&self.file(name, "toml"), text.as_bytes())?;
        self.replace(&self.file(name, "wasm"), bytes)?;
        self.seen(name, self.stamp(name));
        Ok(())
    }

    /// Deletes an entry: the component, then the manifest.
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        for extension in ["wasm", "toml"] {
            match std::fs::remove_file(self.file(name, extension)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.seen.lock().expect("folder lock").remove(name);
        Ok(())
    }

    /// The folder of `name`'s kept versions and history.
    fn history_dir(&self, name: &str) -> PathBuf {
        self.path.join(HISTORY_DIR).join(name)
    }

    /// Keeps `bytes` (with `manifest`) as a version of `name`, under its
    /// digest's hex; a version kept already is left as it is.
    pub fn keep(&self, name: &str, manifest: &Manifest, bytes: &[u8]) -> std::io::Result<String> {
        let dir = self.history_dir(name);
        std::fs::create_dir_all(&dir)?;
        let digest = hex(&Sha256::digest(bytes));
        let component = dir.join(format!("{digest}.wasm"));
        if !component.exists() {
            let manifest = Manifest {
                sha256: Some(digest.clone()),
                ..manifest.clone()
            };
            let text = toml::to_string(&manifest).map_err(std::io::Error::other)?;
            self.replace(&dir.join(format!("{digest}.toml")), text.as_bytes())?;
            self.replace(&component, bytes)?;
        }
        Ok(digest)
    }

    /// The kept version of `name` whose digest's hex is `digest`.
    pub fn kept(&self, name: &str, digest: &str) -> Result<(Manifest, Vec<u8>), EntryError> {
        let dir = self.history_dir(name);
        let gone = |e: &dyn std::fmt::Display| {
            EntryError::Broken(format!("version {digest} of `{name}` is not kept: {e}"))
        };
        let text =
            std::fs::read_to_string(dir.join(format!("{digest}.toml"))).map_err(|e| gone(&e))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| gone(&e))?;
        let bytes = std::fs::read(dir.join(format!("{digest}.wasm"))).map_err(|e| gone(&e))?;
        if hex(&Sha256::digest(&bytes)) != digest {
            return Err(gone(&"its component does not match its digest"));
        }
        Ok((manifest, bytes))
    }

    /// The hex digests of the versions of `name` kept now.
    pub fn kept_digests(&self, name: &str) -> Vec<String> {
        let Ok(listing) = std::fs::read_dir(self.history_dir(name)) else {
            return Vec::new();
        };
        let mut digests: Vec<String> = listing
            .filter_map(|e| {
                let path = e.ok()?.path();
                (path.extension()? == "wasm")
                    .then(|| path.file_stem()?.to_str().map(str::to_owned))?
            })
            .collect();
        digests.sort();
        digests
    }

    /// Deletes the kept versions of `name` but those in `keep` (hex).
    pub fn prune(&self, name: &str, keep: &[String]) -> std::io::Result<()> {
        for digest in self.kept_digests(name) {
            if keep.contains(&digest) {
                continue;
            }
            for extension in ["wasm", "toml"] {
                let path = self.history_dir(name).join(format!("{digest}.{extension}"));
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Appends `entry` to `name`'s history, and cuts it back to its last
    /// [`HISTORY_MAX`] lines once it holds twice that many.
    pub fn log(&self, name: &str, entry: &HistoryEntry) -> std::io::Result<()> {
        let dir = self.history_dir(name);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("log.jsonl");
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?
            .write_all(&line)?;
        let history = self.history(name);
        if history.len() >= 2 * HISTORY_MAX {
            let mut text = Vec::new();
            for entry in &history[history.len() - HISTORY_MAX..] {
                text.extend(serde_json::to_vec(entry).map_err(std::io::Error::other)?);
                text.push(b'\n');
            }
            self.replace(&path, &text)?;
        }
        Ok(())
    }

    /// `name`'s history, oldest first (lines that cannot be read are left
    /// out).
    pub fn history(&self, name: &str) -> Vec<HistoryEntry> {
        std::fs::read_to_string(self.history_dir(name).join("log.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    fn replace(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(&self.path);
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_file_names_and_nothing_else() {
        for good in ["wallet", "ledger-0", "A_b", &"x".repeat(NAME_BYTES_MAX)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-x",
            "../x",
            "a/b",
            "a.b",
            "a b",
            "ä",
            &"x".repeat(NAME_BYTES_MAX + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_manifest_for_other_bytes_is_a_deploy_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::new(dir.path().to_owned());
        let manifest = Manifest {
            store: "s".into(),
            prefix: "p:".into(),
            prefixes: Vec::new(),
            sha256: None,
            reuse_steps: 0,
            reuse_audit: REUSE_AUDIT_DEFAULT,
            limits: LimitOverrides::default(),
        };
        folder.write("a", &manifest, b"version 1").unwrap();
        let (read, bytes) = folder.read("a").unwrap();
        assert_eq!(bytes, b"version 1");
        assert_eq!(read.prefix, "p:");
        // The component of the next version, not yet its manifest.
        std::fs::write(dir.path().join("a.wasm"), b"version 2").unwrap();
        assert_eq!(folder.read("a").unwrap_err(), EntryError::InProgress);
        // A hand-written manifest names no digest: whatever is there goes.
        std::fs::write(
            dir.path().join("a.toml"),
            "store = \"s\"\nprefix = \"q:\"\n",
        )
        .unwrap();
        assert_eq!(folder.read("a").unwrap().1, b"version 2");
        std::fs::write(dir.path().join("a.toml"), "store = 1").unwrap();
        assert!(matches!(folder.read("a"), Err(EntryError::Broken(m)) if m.contains("a.toml")));
        folder.remove("a").unwrap();
        assert!(folder.entries().unwrap().is_empty());
    }
}
