//! The README's first command, `myelin demo` (what `scripts/demo.sh` runs after the set-up),
//! through the built agent: every request and exchange succeeds, the golden metrics saw
//! them, and the cross-node part reaches the second node over HBONE as the client's
//! identity.
//!
//! Needs root and a built `myelin` (`cargo build --release -p myelin`).

use anyhow::{Context, Result};
use myelin_testbed::mesh::myelin_command;
use myelin_testbed::testbed_ready;

#[test]
fn the_demo_succeeds_and_shows_the_cross_node_source_principal() -> Result<()> {
    if !testbed_ready(&["curl"]) {
        return Ok(());
    }
    // Bounded: `timeout` sends SIGTERM, on which the demo tears its nodes down.
    let myelin = myelin_command()?;
    let out = std::process::Command::new("timeout")
        .arg("240")
        .arg(myelin.get_program())
        .args(["demo", "--json"])
        .output()
        .context("running myelin demo")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "myelin demo failed:\n{stderr}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("the demo's JSON summary\n{stderr}"))?;
    assert_eq!(s["requests_failed"], 0, "{s}");
    assert_eq!(s["tcp_exchanges_failed"], 0, "{s}");
    assert!(s["requests_ok"].as_u64() > Some(0), "{s}");
    let golden: u64 = s["golden_requests"]
        .as_array()
        .context("golden_requests")?
        .iter()
        .filter_map(|r| r["requests"].as_u64())
        .sum();
    assert_eq!(
        Some(golden),
        s["requests_ok"].as_u64(),
        "every request in the golden metrics"
    );
    let c = &s["cross_node"];
    assert_eq!(c["requests_failed"], 0, "{s}");
    assert_eq!(
        c["source_principal"], "spiffe://cluster.local/ns/demo/sa/client",
        "{s}"
    );
    assert_eq!(c["connection_security_policy"], "mutual_tls", "{s}");
    Ok(())
}
