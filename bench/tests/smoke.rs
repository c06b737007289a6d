//! The benchmark binary must keep working: `bench --smoke` runs every section for a few hundred
//! milliseconds, and each section checks its own invariants (every measured hit is a hit, every
//! miss one load, counters exact, protected stampede modes call the source less than no cache)
//! and fails the process when one breaks.

use std::process::Command;

#[test]
fn every_benchmark_section_runs_and_checks_its_invariants() {
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--smoke")
        .env_remove("REDIS_URL")
        .output()
        .expect("the bench binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench --smoke failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for heading in [
        "## L2 hit, ~0.9 KiB value, 1 concurrent caller(s)",
        "## L2 hit, ~0.9 KiB value, 64 concurrent caller(s)",
        "## Cluster hit (3 masters), ~0.9 KiB value, 1 concurrent caller(s)",
        "## Cluster hit (3 masters), ~0.9 KiB value, 64 concurrent caller(s)",
        "## Miss + fill",
        "## L1 hit, 64 concurrent caller(s)",
        "## #[cached] vs get_or_fetch",
        "## Bytes per entry in Redis",
        "## Bytes per entry in L1",
        "## HTTP hit, 1 server worker",
        "## Stampede",
        "## Write-behind counters",
    ] {
        assert!(
            stdout.contains(heading),
            "missing {heading:?} in:\n{stdout}"
        );
    }
    // One GET per hit; per miss one GET and one conditional fill (`SET NX PX`: the load saw no
    // key; no script, so no EVALSHA);
    // one GET per HTTP hit; nothing else beyond rounding (on the private server the binary
    // starts; a shared server is not counted). A cluster hit is one GET too, summed over the
    // three masters of the cluster the binary starts (always private).
    let mut counted = vec![("cache-layer cluster hit", &[("GET", "1.000")][..])];
    if stdout.contains("(private server)") {
        counted.extend([
            ("cache-layer hit", &[("GET", "1.000")][..]),
            (
                "cache-layer miss + fill",
                &[("GET", "1.000"), ("SET", "1.000")][..],
            ),
            ("CacheLayer hit (Redis)", &[("GET", "1.000")][..]),
        ]);
    }
    for (what, expected) in counted {
        let prefix = format!("Redis commands per {what}: ");
        let line = stdout
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{stdout}"));
        for entry in line.split(", ") {
            let (command, per_op) = entry.split_once(' ').expect("COMMAND n.nnn");
            if command == "PING" {
                // The invalidation bus pings its subscription once a second (a dead one is
                // noticed within ~2 s): background traffic, not part of any operation.
                continue;
            }
            let wanted = expected
                .iter()
                .find(|(c, _)| *c == command)
                .map_or("0.000", |(_, n)| *n);
            assert_eq!(
                per_op, wanted,
                "{what}: {command} per operation in {line:?}"
            );
        }
        for (command, _) in expected {
            assert!(line.contains(command), "{what}: no {command} in {line:?}");
        }
    }
}
