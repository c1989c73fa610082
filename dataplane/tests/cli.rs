//! The command line's contract for bad input: a message naming the field and the value,
//! exit status 64, and nothing attached.

use std::{path::Path, process::Command};

fn myelin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_myelin"))
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn config(instance: &str, address: &str) -> String {
    format!(
        "myelin:\n  node: {{ name: {instance}, address: {address} }}\n  cgroup_root: {instance}\n  workloads:\n    - {{ name: a, namespace: ns, cgroup: pods/a, ip: 10.77.1.2 }}\n"
    )
}

#[test]
fn bad_config_exits_64_names_field_and_value_and_attaches_nothing() {
    let dir = tempdir();
    let instance = format!("clitest-{}", std::process::id());
    let path = write(&dir, "bad.yaml", &config(&instance, "127.0.0.1"));
    for sub in ["run", "validate"] {
        let out = myelin()
            .args([sub, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{sub}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("myelin.node.address = \"127.0.0.1\""),
            "{sub}: {err}"
        );
    }
    assert!(
        !Path::new("/sys/fs/bpf/myelin").join(&instance).exists(),
        "nothing may be pinned"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `run` reads the Envoy sections: their problems are listed with field paths, before anything
/// is attached.
#[test]
fn run_lists_envoy_problems_exits_64_and_attaches_nothing() {
    let dir = tempdir();
    let instance = format!("clitest-envoy-{}", std::process::id());
    let text = format!(
        "{}dynamic_resources:\n  ads_config: {{ api_type: GRPC, grpc_services: [ {{ envoy_grpc: {{ cluster_name: cp }} }} ] }}\nstatic_resources:\n  clusters:\n  - {{ name: cp, type: EDS, eds_cluster_config: {{ eds_config: {{ ads: {{}} }} }} }}\n",
        config(&instance, "10.77.0.1")
    );
    let path = write(&dir, "envoy.yaml", &text);
    for sub in ["run", "validate"] {
        let out = myelin()
            .args([sub, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{sub}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for want in [
            "node.id: required when dynamic_resources.ads_config is set",
            "static_resources.clusters[0].type: EDS: the ADS cluster \"cp\" must be STATIC, STRICT_DNS or LOGICAL_DNS",
        ] {
            assert!(err.contains(want), "{sub}: {want:?} not in {err}");
        }
    }
    assert!(
        !Path::new("/sys/fs/bpf/myelin").join(&instance).exists(),
        "nothing may be pinned"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn validate_accepts_a_good_file_and_reports_missing_files() {
    let dir = tempdir();
    let good = write(&dir, "good.yaml", &config("clitest-good", "10.77.0.1"));
    let out = myelin()
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));

    let out = myelin()
        .args(["validate", "--config"])
        .arg(dir.join("missing.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));

    let syntax = write(&dir, "syntax.yaml", "myelin: [unclosed");
    let out = myelin()
        .args(["validate", "--config"])
        .arg(&syntax)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "myelin-cli-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `myelin validate` on the real Envoy configs in `../shared/data/envoy/`, as that folder's
/// README expects: accepted, or rejected with every reason by field path.
#[test]
fn validate_the_shared_envoy_configs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/envoy");
    let cases: &[(&str, Option<&[&str]>)] = &[
        ("ads.yaml", None),
        ("envoy-demo.yaml", None),
        (
            "envoyproxy_io_proxy.yaml",
            Some(&["static_resources.listeners[0]", "unknown field `scheme`"]),
        ),
        ("encapsulate_in_http2_connect.yaml", None),
        ("terminate_http2_connect.yaml", None),
        (
            "original-dst-deprecated-v1.yaml",
            Some(&[
                "filters[0].config.deprecated_v1: the deprecated Envoy v1 filter format",
                "static_resources.listeners[0].use_original_dst: deprecated v1/v2",
            ]),
        ),
    ];
    for (file, expect) in cases {
        let path = dir.join(file);
        assert!(
            path.is_file(),
            "{} missing (CI has shared/ beside the repo)",
            path.display()
        );
        let out = myelin()
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        match expect {
            None => assert!(out.status.success(), "{file}: {err}"),
            Some(wants) => {
                assert_eq!(out.status.code(), Some(64), "{file}: {out:?}");
                for w in *wants {
                    assert!(err.contains(w), "{file}: {w:?} not in:\n{err}");
                }
            }
        }
    }
}
