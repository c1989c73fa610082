//! Tests of the test bed itself: topology, process placement, teardown, and the
//! podtool / Python clients pod to pod (no mesh: the node just routes).
//!
//! Needs root; see `myelin_testbed::testbed_ready` for the CI rule. Every test
//! builds its own uniquely named node, so they run in parallel.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use myelin_testbed::{cgroup2_mount, json_output, testbed_ready, Node, Pod, Proc};
use serde_json::Value;

fn podtool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_myelin-podtool"))
}

fn podtool_args(args: &[&str]) -> Command {
    let mut c = podtool();
    c.args(args);
    c
}

/// Starts a podtool server in `pod` and waits for its "listening" line.
fn start_server(pod: &Pod, args: &[&str]) -> (Proc, u16) {
    let mut cmd = podtool_args(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut proc = pod.spawn(cmd).expect("spawning server");
    let line = proc
        .next_line(Duration::from_secs(10))
        .expect("server listening line");
    let v: Value = serde_json::from_str(&line).expect("listening line is JSON");
    let port = v["port"].as_u64().expect("port in listening line") as u16;
    (proc, port)
}

/// Runs podtool in `pod` and returns its JSON report, failing the test on error.
fn client(pod: &Pod, args: &[&str]) -> Value {
    pod.run_json(podtool_args(args))
        .unwrap_or_else(|e| panic!("podtool {args:?}: {e:#}"))
}

/// The cgroup v2 path of `pid`, relative to the cgroup2 mount ("/a/b").
fn cgroup_of(pid: u32) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_string()
}

fn rel_cgroup(path: &Path) -> String {
    let root = cgroup2_mount().unwrap();
    format!("/{}", path.strip_prefix(&root).unwrap().display())
}

fn inode(path: impl AsRef<Path>) -> u64 {
    fs::metadata(path).unwrap().ino()
}

/// Pids of processes whose network namespace has inode `ino`.
fn pids_in_netns(ino: u64) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| m.ino())
                .ok()
                == Some(ino)
        })
        .collect()
}

#[test]
fn two_pods_reach_each_other_through_the_node() {
    if !testbed_ready(&[]) {
        return;
    }
    let mut node = Node::new("tb").unwrap();
    let a = node.add_pod("a").unwrap();
    let b = node.add_pod("b").unwrap();
    assert_ne!(a.ip, b.ip);
    let (_server, port) = start_server(&b, &["echo-server", "--port", "7000"]);
    let before = a.veth_bytes().unwrap();
    let before_b = b.veth_bytes().unwrap();
    let addr = format!("{}:{port}", b.ip);
    let r = client(
        &a,
        &[
            "exchange", "--addr", &addr, "--count", "100", "--size", "1024",
        ],
    );
    assert_eq!(r["ok"], 100, "{r}");
    let after = a.veth_bytes().unwrap();
    let after_b = b.veth_bytes().unwrap();
    // 100 KiB each way, plus headers.
    assert!(
        after.1 - before.1 >= 100 * 1024,
        "a tx {before:?} -> {after:?}"
    );
    assert!(
        after.0 - before.0 >= 100 * 1024,
        "a rx {before:?} -> {after:?}"
    );
    assert!(
        after_b.0 - before_b.0 >= 100 * 1024,
        "b rx {before_b:?} -> {after_b:?}"
    );
    // The node itself reaches the pods too (source: the node address).
    let out = node
        .run(podtool_args(&["exchange", "--addr", &addr, "--count", "3"]))
        .unwrap();
    let r = json_output(&out, "exchange from the node").unwrap();
    assert_eq!(r["ok"], 3, "{r}");
}

#[test]
fn processes_land_in_their_cgroup_and_netns() {
    if !testbed_ready(&[]) {
        return;
    }
    let mut node = Node::new("tb").unwrap();
    let pod = node.add_pod("p").unwrap();

    let mut sleep = Command::new("sleep");
    sleep.arg("30");
    let proc = pod.spawn(sleep).unwrap();
    assert_eq!(cgroup_of(proc.pid()), rel_cgroup(pod.cgroup_path()));
    assert_eq!(
        inode(format!("/proc/{}/ns/net", proc.pid())),
        inode(pod.netns_path())
    );

    let mut sleep = Command::new("sleep");
    sleep.arg("30");
    let agent = node.spawn_agent(sleep).unwrap();
    assert_eq!(
        cgroup_of(agent.pid()),
        rel_cgroup(&node.agent_cgroup_path())
    );
    assert_eq!(
        inode(format!("/proc/{}/ns/net", agent.pid())),
        inode(node.netns_path())
    );
    assert!(node.agent_cgroup_path().starts_with(node.cgroup_path()));
    assert!(pod.cgroup_path().starts_with(node.cgroup_path()));

    // Unlike `ip netns exec`, our processes still see cgroup2 and bpffs.
    let mut ls = Command::new("ls");
    ls.arg(node.cgroup_path());
    let out = pod.run(ls).unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("pods"));

    // A hung command fails `run_timeout` instead of hanging the test.
    let mut hang = Command::new("sleep");
    hang.arg("30");
    let start = std::time::Instant::now();
    let err = pod
        .run_timeout(hang, Duration::from_millis(200))
        .unwrap_err();
    assert!(format!("{err:#}").contains("did not finish"), "{err:#}");
    assert!(start.elapsed() < Duration::from_secs(5));

    // `Node::run`: node netns, caller's cgroup.
    let mut cat = Command::new("sh");
    cat.args(["-c", "cat /proc/self/cgroup; readlink /proc/self/ns/net"]);
    let out = node.run(cat).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(&node.name), "{text}");
    assert!(
        text.contains(&format!("net:[{}]", inode(node.netns_path()))),
        "{text}"
    );
}

/// What a teardown test needs to check after the node is gone.
#[derive(Default)]
struct Built {
    netns: Vec<PathBuf>,
    cgroups: Vec<PathBuf>,
    netns_inodes: Vec<u64>,
}

fn build_and_record(built: &mut Built) -> Node {
    let mut node = Node::new("tbdrop").unwrap();
    let a = node.add_pod("a").unwrap();
    let b = node.add_pod("b").unwrap();
    built.netns = vec![node.netns_path(), a.netns_path(), b.netns_path()];
    built.cgroups = vec![
        node.cgroup_path().to_path_buf(),
        node.agent_cgroup_path(),
        a.cgroup_path().to_path_buf(),
        b.cgroup_path().to_path_buf(),
    ];
    built.netns_inodes = built.netns.iter().map(inode).collect();
    node
}

fn assert_all_gone(built: &Built) {
    for p in &built.netns {
        assert!(!p.exists(), "{} still exists", p.display());
    }
    for p in &built.cgroups {
        assert!(!p.exists(), "{} still exists", p.display());
    }
    for &ino in &built.netns_inodes {
        assert_eq!(
            pids_in_netns(ino),
            Vec::<u32>::new(),
            "processes left in netns {ino}"
        );
    }
}

#[test]
fn node_drop_after_panic_removes_everything() {
    if !testbed_ready(&[]) {
        return;
    }
    let mut built = Built::default();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let node = build_and_record(&mut built);
        let a = node.pod("a").unwrap().clone();
        let b = node.pod("b").unwrap().clone();
        let (_server, _) = start_server(&b, &["echo-server", "--port", "7000"]);
        // A process the test "forgot": no Proc guard; the node's cgroup.kill gets it.
        let mut sleep = Command::new("sleep");
        sleep.arg("300");
        std::mem::forget(a.spawn(sleep).unwrap());
        let _agent = node.spawn_agent({
            let mut c = Command::new("sleep");
            c.arg("300");
            c
        });
        panic!("deliberate panic with a live node");
    }));
    assert!(result.is_err());
    assert_all_gone(&built);
}

#[test]
fn node_drop_and_remove_pod_clean_up() {
    if !testbed_ready(&[]) {
        return;
    }
    let mut built = Built::default();
    {
        let mut node = build_and_record(&mut built);
        let b = node.pod("b").unwrap().clone();
        let _server = start_server(&b, &["echo-server", "--port", "7000"]);
        let c = node.add_pod("c").unwrap();
        let veth_exists = |node: &Node| {
            let mut cmd = Command::new("ip");
            cmd.args(["link", "show", c.node_veth()]);
            node.run(cmd).unwrap().status.success()
        };
        assert!(veth_exists(&node));
        node.remove_pod("c").unwrap();
        assert!(
            !veth_exists(&node),
            "veth {} survived remove_pod",
            c.node_veth()
        );
        assert!(!c.netns_path().exists());
        assert!(!c.cgroup_path().exists());
        assert!(node.pod("c").is_none());
    }
    assert_all_gone(&built);
}

#[test]
fn podtool_modes_pod_to_pod() {
    if !testbed_ready(&[]) {
        return;
    }
    let mut node = Node::new("tb").unwrap();
    let a = node.add_pod("client").unwrap();
    let b = node.add_pod("server").unwrap();
    let (_echo, echo_port) = start_server(&b, &["echo-server", "--port", "0"]);
    let (_first, first_port) = start_server(
        &b,
        &["server-first", "--port", "0", "--banner", "HELLO myelin\n"],
    );
    let echo = format!("{}:{echo_port}", b.ip);
    let first = format!("{}:{first_port}", b.ip);

    let r = client(
        &a,
        &[
            "exchange", "--addr", &echo, "--count", "1000", "--size", "1024",
        ],
    );
    assert_eq!(
        (r["ok"].as_u64(), r["eagain"].as_u64()),
        (Some(1000), Some(0)),
        "{r}"
    );

    let r = client(
        &a,
        &[
            "stream",
            "--addr",
            &echo,
            "--bytes",
            &(10 << 20).to_string(),
        ],
    );
    assert_eq!(r["received"], 10 << 20, "{r}");
    assert_eq!(r["ok"], true, "{r}");

    let r = client(&a, &["half-close", "--addr", &echo, "--size", "100000"]);
    assert_eq!(
        (r["eof"].as_bool(), r["received"].as_u64()),
        (Some(true), Some(100000)),
        "{r}"
    );

    let r = client(
        &a,
        &[
            "exchange",
            "--addr",
            &first,
            "--count",
            "10",
            "--expect-banner",
            "HELLO myelin\n",
        ],
    );
    assert_eq!(r["ok"], 10, "{r}");

    let r = client(&a, &["connect-many", "--addr", &echo, "--conns", "50"]);
    assert_eq!(r["ok"], 50, "{r}");
}

#[test]
fn podtool_reports_errors_with_errno() {
    if !testbed_ready(&[]) {
        return;
    }
    let mut node = Node::new("tb").unwrap();
    let a = node.add_pod("a").unwrap();
    let b = node.add_pod("b").unwrap();
    // Nothing listens: ECONNREFUSED, non-zero exit, still one JSON line.
    let out = a
        .run(podtool_args(&[
            "exchange",
            "--addr",
            &format!("{}:9", b.ip),
        ]))
        .unwrap();
    assert!(!out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["first_error"]["kind"], "ECONNREFUSED", "{r}");
    assert_eq!(r["first_error"]["errno"], libc_econnrefused(), "{r}");
    // A banner that does not match is a failure too.
    let (_s, port) = start_server(&b, &["server-first", "--port", "0", "--banner", "abc"]);
    let out = a
        .run(podtool_args(&[
            "exchange",
            "--addr",
            &format!("{}:{port}", b.ip),
            "--expect-banner",
            "xyz",
        ]))
        .unwrap();
    assert!(json_output(&out, "bad banner").is_err());
}

fn libc_econnrefused() -> i64 {
    111
}

/// Env var that turns `leaky_child` into a process that builds a node and aborts
/// without running any destructor, like a test run killed by SIGKILL.
const LEAK_ENV: &str = "MYELIN_TESTBED_LEAK_A_NODE";

#[test]
fn leaky_child() {
    if std::env::var_os(LEAK_ENV).is_none() {
        return; // Only meaningful when run by `sweep_stale_removes_abandoned_nodes`.
    }
    let mut node = Node::new("tbleak").unwrap();
    node.add_pod("a").unwrap();
    println!("NODE {}", node.name);
    std::process::abort();
}

#[test]
fn sweep_stale_removes_abandoned_nodes() {
    if !testbed_ready(&[]) {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "testbed::leaky_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(LEAK_ENV, "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let name = text
        .lines()
        .find_map(|l| Some(l.split_once("NODE ")?.1.trim()))
        .unwrap_or_else(|| panic!("child printed no node: {out:?}"))
        .to_string();
    assert!(!out.status.success(), "the child should have aborted");
    let cgroup = cgroup2_mount().unwrap().join(&name);
    assert!(cgroup.exists() && Path::new("/run/netns").join(&name).exists());
    let swept = myelin_testbed::sweep_stale("tbleak").unwrap();
    assert!(swept.contains(&name), "{swept:?}");
    assert!(!cgroup.exists());
    assert!(!Path::new("/run/netns").join(&name).exists());
    assert!(!Path::new("/run/netns").join(format!("{name}-a")).exists());
}

#[test]
fn http_server_keep_alive_with_curl() {
    if !testbed_ready(&["curl"]) {
        return;
    }
    let mut node = Node::new("tb").unwrap();
    let a = node.add_pod("a").unwrap();
    let b = node.add_pod("b").unwrap();
    let (_s, port) = start_server(&b, &["http-server", "--port", "0", "--name", "backend-b"]);
    let url = format!("http://{}:{port}/", b.ip);
    // Two URLs on one curl: the second reuses the connection (keep-alive).
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--fail", "-D", "-", &url, &format!("{url}again")]);
    let out = a.run(curl).unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("backend-b").count(), 4, "{text}"); // 2 bodies + 2 headers
    assert!(text.contains("x-request-count: 2"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).is_empty(), "{out:?}");
    // A POST with a body, then the node itself as the client.
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--fail", "-d", "hello", &url]);
    let out = node.run(curl).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "backend-b", "{out:?}");
}

#[test]
fn python_blocking_client_pod_to_pod() {
    if !testbed_ready(&["python3"]) {
        return;
    }
    let mut node = Node::new("tb").unwrap();
    let a = node.add_pod("py").unwrap();
    let b = node.add_pod("echo").unwrap();
    let (_s, port) = start_server(&b, &["echo-server", "--port", "0"]);
    let addr = format!("{}:{port}", b.ip);
    let py = myelin_testbed::python_client_path();
    let mut cmd = Command::new("python3");
    cmd.arg(py).args([
        "exchange", "--addr", &addr, "--count", "200", "--size", "1024",
    ]);
    let r = a.run_json(cmd).unwrap();
    assert_eq!(
        (r["ok"].as_u64(), r["eagain"].as_u64()),
        (Some(200), Some(0)),
        "{r}"
    );
    let mut cmd = Command::new("python3");
    cmd.arg(py)
        .args(["stream", "--addr", &addr, "--bytes", &(4 << 20).to_string()]);
    let r = a.run_json(cmd).unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["received"], 4 << 20, "{r}");
}
