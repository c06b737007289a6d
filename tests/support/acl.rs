//! A Redis ACL user limited to one namespace, created from the exact line the README tells a
//! security team to paste (so the documented line is the tested one).

use super::redis_server::RedisServer;

/// The README's example: user `shop-cache`, password `CHANGE-ME`, namespace `shop`.
const README: &str = include_str!("../../README.md");
const README_USER: &str = "shop-cache";
const README_PASSWORD: &str = ">CHANGE-ME";
const README_NAMESPACE: &str = "shop";

/// The user name [`create_limited_user`] creates.
pub const LIMITED_USER: &str = "limited";
/// Its password.
pub const LIMITED_PASSWORD: &str = "limited-secret";

/// The README's `ACL SETUSER shop-cache ...` line, as whitespace-separated arguments after
/// `ACL SETUSER`, rewritten for `namespace` and [`LIMITED_USER`].
pub fn readme_acl_rules(namespace: &str) -> Vec<String> {
    let line = README
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("ACL SETUSER {README_USER} ")))
        .expect("README.md has an `ACL SETUSER shop-cache ...` line");
    line.split_whitespace()
        .skip(2)
        .map(|word| match word {
            README_USER => LIMITED_USER.to_owned(),
            README_PASSWORD => format!(">{LIMITED_PASSWORD}"),
            w if w.starts_with(&format!("~{README_NAMESPACE}:")) => {
                format!("~{namespace}:{}", &w[README_NAMESPACE.len() + 2..])
            }
            w if w.starts_with(&format!("&{README_NAMESPACE}:")) => {
                format!("&{namespace}:{}", &w[README_NAMESPACE.len() + 2..])
            }
            w => w.to_owned(),
        })
        .collect()
}

/// Creates (or resets) [`LIMITED_USER`] on `server` with the README's rules for `namespace` and
/// returns `redis://limited:limited-secret@127.0.0.1:PORT`.
pub fn create_limited_user(server: &RedisServer, namespace: &str) -> String {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER");
    for word in readme_acl_rules(namespace) {
        cmd.arg(word);
    }
    let _: () = server.query(&cmd);
    format!(
        "redis://{LIMITED_USER}:{LIMITED_PASSWORD}@127.0.0.1:{}",
        server.port()
    )
}

/// The `ACL LOG` entries (denials) as text, newest first; empty when nothing was denied.
pub fn acl_denials(server: &RedisServer) -> Vec<String> {
    let log: Vec<redis::Value> = server.query(redis::cmd("ACL").arg("LOG"));
    log.iter().map(|entry| format!("{entry:?}")).collect()
}
