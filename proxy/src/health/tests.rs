use super::*;
use crate::model::health_check::{EndpointHealthCheck, HealthChecker, TcpHealthCheck};

fn config(unhealthy: u32, healthy: u32) -> HealthCheck {
    HealthCheck {
        timeout: Duration::from_secs(1),
        interval: Duration::from_secs(10),
        initial_jitter: Duration::ZERO,
        interval_jitter: Duration::ZERO,
        interval_jitter_percent: 0,
        unhealthy_threshold: unhealthy,
        healthy_threshold: healthy,
        reuse_connection: true,
        no_traffic_interval: Duration::from_secs(60),
        no_traffic_healthy_interval: None,
        unhealthy_interval: Duration::from_secs(20),
        unhealthy_edge_interval: Duration::from_secs(3),
        healthy_edge_interval: Duration::from_secs(4),
        always_log_health_check_failures: false,
        checker: HealthChecker::Tcp(TcpHealthCheck::default()),
    }
}

fn net() -> Outcome {
    Outcome::Network("refused".into())
}

/// Runs `outcomes` through a checker's counting from a new host (failing until its first
/// check), returning whether the host failed after each.
fn run(c: &HealthCheck, outcomes: &[Outcome]) -> Vec<(bool, Transition)> {
    let mut counts = Counts::new();
    let mut failing = true;
    outcomes
        .iter()
        .map(|o| {
            let (f, t) = counts.record(c, failing, o);
            failing = f;
            (f, t)
        })
        .collect()
}

#[test]
fn a_new_host_passes_after_one_check_then_needs_the_thresholds() {
    use Transition::*;
    let c = config(3, 2);
    let got = run(
        &c,
        &[
            Outcome::Pass, // first check: one is enough
            net(),
            net(),
            Outcome::Pass, // resets the failure count
            net(),
            net(),
            net(), // third in a row: unhealthy
            net(),
            Outcome::Pass,
            Outcome::Pass, // healthy_threshold 2
            Outcome::Pass,
        ],
    );
    assert_eq!(
        got,
        [
            (false, Changed),
            (false, Pending),
            (false, Pending),
            (false, Unchanged),
            (false, Pending),
            (false, Pending),
            (true, Changed),
            (true, Unchanged),
            (true, Pending),
            (false, Changed),
            (false, Unchanged),
        ]
    );
}

#[test]
fn a_wrong_answer_fails_at_once_a_retriable_one_counts() {
    use Transition::*;
    let c = config(2, 1);
    let got = run(
        &c,
        &[
            Outcome::Pass,
            Outcome::Retriable("503".into()),
            Outcome::Pass,
            Outcome::Fail("404".into()),
            Outcome::Pass,
            Outcome::Retriable("503".into()),
            Outcome::Retriable("503".into()),
        ],
    );
    assert_eq!(
        got,
        [
            (false, Changed),
            (false, Pending),
            (false, Unchanged),
            (true, Changed),
            (false, Changed),
            (false, Pending),
            (true, Changed),
        ]
    );
}

#[test]
fn a_new_host_that_fails_its_first_check_stays_failing() {
    let c = config(3, 2);
    let got = run(&c, &[net(), Outcome::Pass, Outcome::Pass]);
    assert_eq!(
        got,
        [
            (true, Transition::Unchanged),
            (true, Transition::Pending),
            (false, Transition::Changed)
        ]
    );
}

#[test]
fn intervals_follow_traffic_result_and_edges() {
    use Transition::*;
    let mut c = config(3, 2);
    let s = Duration::from_secs;
    // No traffic yet: the no-traffic interval whatever happened.
    assert_eq!(base_interval(&c, false, true, Changed), s(60));
    assert_eq!(base_interval(&c, false, false, Pending), s(60));
    c.no_traffic_healthy_interval = Some(s(90));
    assert_eq!(base_interval(&c, false, true, Unchanged), s(90));
    assert_eq!(base_interval(&c, false, false, Unchanged), s(60));
    // With traffic: interval, edges while a change is pending, the unhealthy interval.
    assert_eq!(base_interval(&c, true, true, Unchanged), s(10));
    assert_eq!(base_interval(&c, true, true, Changed), s(10));
    assert_eq!(base_interval(&c, true, true, Pending), s(4));
    assert_eq!(base_interval(&c, true, false, Pending), s(3));
    assert_eq!(base_interval(&c, true, false, Unchanged), s(20));
    assert_eq!(base_interval(&c, true, false, Changed), s(20));
}

#[test]
fn jitter_adds_up_to_its_bounds() {
    let mut c = config(1, 1);
    c.interval_jitter_percent = 50;
    c.interval_jitter = Duration::from_millis(100);
    let base = Duration::from_secs(1);
    let mut seen_above = false;
    for _ in 0..200 {
        let d = jittered(&c, base);
        assert!(d >= base && d < base + Duration::from_millis(600), "{d:?}");
        seen_above |= d > base + Duration::from_millis(300);
    }
    assert!(seen_above, "the percentage jitter never showed");
    c.interval_jitter_percent = 0;
    c.interval_jitter = Duration::ZERO;
    assert_eq!(jittered(&c, base), base);
}

#[test]
fn grpc_request_and_response_encoding() {
    assert_eq!(&health_check_request("")[..], &[0, 0, 0, 0, 0]);
    assert_eq!(
        &health_check_request("ab")[..],
        &[0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']
    );
    let long = "x".repeat(200);
    let r = health_check_request(&long);
    // A two-byte length varint: 200 = 0xc8 0x01.
    assert_eq!(&r[..8], &[0, 0, 0, 0, 203, 0x0a, 0xc8, 0x01]);
    // HealthCheckResponse { status: SERVING } and others.
    assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
    assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
    assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0));
    // An unknown length-delimited field before the status is skipped.
    assert_eq!(
        serving_status(&[0, 0, 0, 0, 5, 0x12, 1, b'z', 0x08, 1]),
        Some(1)
    );
    // Cut, compressed, or no message at all.
    assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08]), None);
    assert_eq!(serving_status(&[1, 0, 0, 0, 2, 0x08, 1]), None);
    assert_eq!(serving_status(&[]), None);
}

#[test]
fn hosts_record_each_checker_and_change_as_a_whole() {
    let h = Host::new(EndpointAddress::Socket("127.0.0.1:1".parse().unwrap()), 1)
        .with_health_checks(2, None);
    assert!(!h.passes_health_checks(), "a new host fails until checked");
    assert!(!h.set_check(0, true), "checker 1 still fails it");
    assert!(!h.passes_health_checks());
    assert!(h.set_check(1, true));
    assert!(h.passes_health_checks());
    assert!(h.set_check(1, false));
    assert!(!h.set_check(0, false), "already failing");
    assert!(h.check_fails(0) && h.check_fails(1));
    let disabled = Host::new(EndpointAddress::Socket("127.0.0.1:1".parse().unwrap()), 1)
        .with_health_checks(
            2,
            Some(EndpointHealthCheck {
                disabled: true,
                ..Default::default()
            }),
        );
    assert!(disabled.passes_health_checks());
}
