//! The soak: 32 clients of `segments serve` for a minute, half over the
//! PostgreSQL protocol running the benchmark's SQL, half over HTTP asking
//! for previews and the segments list, while other processes import events
//! and recompute the base. No request fails, every SQL answer is one
//! snapshot whole, and the server's memory is back under a bound at the
//! end. The latencies it prints are in BENCHMARKS.md.

use super::cli::{AS_OF, segments, stdout_of};

/// How long the clients run, and how many there are.
const SECONDS: u64 = 60;
const CLIENTS: usize = 32;
/// The server's resident size a few seconds after the clients stop.
const RESIDENT_BOUND_MIB: u64 = 300;

#[test]
fn clients_of_both_protocols_for_a_minute_while_the_base_changes() {
    super::common::require_python("psycopg", "'psycopg[binary]'");
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    segments(b)
        .args(["gen", "--contacts", "20000", "--events-per-contact", "10"])
        .args(["--as-of", AS_OF])
        .assert()
        .success();
    // A small file of events of existing contacts, imported again and again.
    let ids = stdout_of(segments(b).args([
        "sql",
        "--format",
        "csv",
        "SELECT contact_id FROM contacts ORDER BY contact_id LIMIT 200",
    ]));
    let mut csv = String::from("contact_id,ts,type,operation_id\n");
    for (i, id) in ids.lines().skip(1).enumerate() {
        csv.push_str(&format!(
            "{id},2026-11-{:02}T10:00:00Z,email_open,NL-SOAK\n",
            1 + i % 20
        ));
    }
    let events = b.join("soak-events.csv");
    std::fs::write(&events, csv).unwrap();

    let (child, http, pg) = super::common::serve_both(b, "pw", &[]);
    let server = Server(child);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/soak.py");
    let mut clients = std::process::Command::new("python3")
        .arg(&script)
        .args([&http.to_string(), &pg.to_string(), "pw"])
        .args([&SECONDS.to_string(), &CLIENTS.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Writers in other processes while the clients run.
    let mut writes = 0;
    while clients.try_wait().unwrap().is_none() {
        segments(b)
            .args(["--wait", "60s", "import", "events"])
            .arg(&events)
            .args(["--name", &format!("soak-{writes}"), "--as-of", AS_OF])
            .assert()
            .success();
        segments(b)
            .args(["--wait", "60s", "recompute", "--as-of", AS_OF])
            .assert()
            .success();
        writes += 2;
    }
    let out = clients.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("soak ({writes} writes by other processes meanwhile): {seen}");
    assert_eq!(seen["error_count"], 0, "{seen}");
    assert_eq!(seen["torn"], serde_json::json!([]), "{seen}");
    for kind in [
        "sql: snapshot",
        "sql: city of a segment",
        "sql: top operations",
        "http: preview",
        "http: segments list",
    ] {
        assert!(seen["requests"][kind].as_u64() > Some(0), "{kind}: {seen}");
    }
    assert!(writes >= 4, "{writes} writes during the soak");
    // Memory back under the bound once the clients are gone.
    let resident = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.0.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap()
            / 1024
    };
    let mut now = resident();
    for _ in 0..40 {
        if now < RESIDENT_BOUND_MIB {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        now = resident();
    }
    assert!(
        now < RESIDENT_BOUND_MIB,
        "server resident {now} MiB after the soak"
    );
    println!("soak: server resident {now} MiB after the clients stopped");
}

/// The server, stopped when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
