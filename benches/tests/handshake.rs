//! The handshake benchmark for a second per mode, so that it cannot rot: every mode
//! completes connections, and every HBONE connection was a mutual TLS handshake the server
//! verified (its own count), none refused. Timings are not checked.

use std::time::Duration;

use myelin_benches::handshake::{self, Mode, Options};

#[test]
fn every_mode_completes_and_every_hbone_handshake_is_verified() {
    let opts = Options {
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        clients: 2,
        modes: Mode::ALL.to_vec(),
    };
    let runs = handshake::run(&opts, &|| Ok(())).expect("benchmark run");
    assert_eq!(runs.len(), 3);
    for m in &runs {
        assert!(m.connections > 0 && m.per_second > 0.0, "{m:?}");
        assert_eq!(m.errors, 0, "{m:?}");
        assert!(m.p50_us > 0.0 && m.p50_us <= m.p99_us, "{m:?}");
        match m.mode {
            Mode::Hbone => {
                assert_eq!(m.verified, Some(m.connections), "{m:?}");
                assert_eq!(m.refused, Some(0), "{m:?}");
            }
            _ => assert_eq!(m.verified, None, "{m:?}"),
        }
    }
    let table = handshake::markdown(&runs);
    assert!(table.contains("| hbone | "), "{table}");
}
