//! `redstage new`: a participant crate from the template built into the
//! binary (`cli/template/`): its `Cargo.toml` (the SDK, a `cdylib`, a release
//! profile tuned for size), the linker setting that makes a plain
//! `cargo build --target wasm32-unknown-unknown` produce a component,
//! `src/lib.rs` with `declare`, `execute` and native tests, and a README
//! with the commands that build, test, call and deploy it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

/// The files of a new participant crate, by path; `{name}`, `{lib}` and
/// `{sdk}` are filled in.
const TEMPLATE: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("template/Cargo.toml.txt")),
    (
        ".cargo/config.toml",
        include_str!("template/config.toml.txt"),
    ),
    ("src/lib.rs", include_str!("template/lib.rs.txt")),
    ("README.md", include_str!("template/README.md.txt")),
    (".gitignore", include_str!("template/gitignore.txt")),
];

/// The SDK dependency of a crate made without `--sdk-path`.
const SDK_FROM_REGISTRY: &str = concat!("redstage-guest = \"", env!("CARGO_PKG_VERSION"), "\"");

/// Writes participant `name`'s crate into `dir` (default `./NAME`), which
/// must not exist or be empty. With `sdk_path`, the SDK is a path
/// dependency on that folder (a checkout's `guest-sdk/`).
pub fn run(
    name: &str,
    dir: Option<PathBuf>,
    sdk_path: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    check_name(name)?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "{} exists and is not empty: choose another --dir",
            dir.display()
        );
    }
    let sdk = match sdk_path {
        Some(path) => {
            let path = std::path::absolute(&path)
                .with_context(|| format!("--sdk-path {}", path.display()))?;
            if !path.join("Cargo.toml").is_file() {
                bail!(
                    "--sdk-path {}: no Cargo.toml there (give the SDK's folder, guest-sdk/)",
                    path.display()
                );
            }
            format!(
                "redstage-guest = {{ path = {:?} }}",
                path.display().to_string()
            )
        }
        None => SDK_FROM_REGISTRY.to_owned(),
    };
    let lib = name.replace('-', "_");
    for (path, text) in TEMPLATE {
        let text = text
            .replace("{name}", name)
            .replace("{lib}", &lib)
            .replace("{sdk}", &sdk);
        write(&dir.join(path), &text)?;
    }
    println!("created participant `{name}` in {}", dir.display());
    println!("  cd {}", dir.display());
    println!("  cargo test");
    println!("  cargo build --release --target wasm32-unknown-unknown");
    println!("  -> target/wasm32-unknown-unknown/release/{lib}.wasm (see README.md)");
    Ok(ExitCode::SUCCESS)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A crate name that is also a participant name: ASCII letters, digits,
/// `-` and `_`, starting with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= crate::participants::folder::NAME_BYTES_MAX
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        bail!(
            "`{name}` cannot name a participant crate: 1 to 64 ASCII letters, digits, `-` or `_`, \
             starting with a letter"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_file_filled_in_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let crate_dir = dir.path().join("shop-rule");
        run("shop-rule", Some(crate_dir.clone()), None).unwrap();
        let cargo = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"shop-rule\""), "{cargo}");
        assert!(cargo.contains(SDK_FROM_REGISTRY), "{cargo}");
        assert!(
            cargo.contains("crate-type = [\"cdylib\", \"rlib\"]"),
            "{cargo}"
        );
        let readme = std::fs::read_to_string(crate_dir.join("README.md")).unwrap();
        assert!(readme.contains("release/shop_rule.wasm"), "{readme}");
        assert!(!readme.contains("{lib}") && !cargo.contains("{sdk}"));
        assert!(crate_dir.join(".cargo/config.toml").is_file());
        let again = run("shop-rule", Some(crate_dir), None).unwrap_err();
        assert!(again.to_string().contains("not empty"), "{again}");
        for bad in ["", "9lives", "a b", "../x"] {
            assert!(run(bad, Some(dir.path().join("x")), None).is_err(), "{bad}");
        }
    }
}
