//! A Python virtual environment with the Python client (`clients/python`,
//! installed editable, so its tests run the code as it is) and pytest,
//! made once per machine under `target/python-venv`, and pytest run in it.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

/// The venv's `python`, the venv made or brought up to date first (once per
/// test process).
pub fn python() -> &'static PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = crate::workspace().join("target/python-venv");
        let python = venv.join("bin/python");
        let ready = python.exists()
            && Command::new(&python)
                .args(["-c", "import redstage, httpx, pytest"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !ready {
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
            run(Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "-e"])
                .arg(crate::workspace().join("clients/python[test]")));
        }
        python
    })
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// `python -m pytest ARGS` in `clients/python`, with `envs`, started.
pub fn spawn_pytest(args: &[&str], envs: &[(&str, String)]) -> Child {
    Command::new(python())
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs"])
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .current_dir(crate::workspace().join("clients/python"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pytest")
}

/// Waits for a pytest run and panics with its output unless every selected
/// test passed and none was skipped.
pub fn assert_passed(child: Child) -> Output {
    let out = child.wait_with_output().expect("wait for pytest");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pytest failed:\n{text}");
    assert!(!text.contains("skipped"), "pytest skipped tests:\n{text}");
    assert!(text.contains(" passed"), "pytest ran no test:\n{text}");
    out
}
