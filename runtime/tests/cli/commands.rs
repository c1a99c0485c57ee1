//! Commands that need no container: spec, features, list, and the shape of their output.

use serde_json::Value;

use crate::support::{husk_bin, output_within, show, Env};
use std::process::Command;
use std::time::Duration;

#[test]
fn spec_writes_a_runc_style_config_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = output_within(
        Command::new(husk_bin())
            .args(["spec", "--bundle"])
            .arg(dir.path()),
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["args"], serde_json::json!(["sh"]));
    assert_eq!(config["process"]["terminal"], true);
    assert_eq!(config["root"]["path"], "rootfs");
    let o = output_within(
        Command::new(husk_bin())
            .args(["spec", "--bundle"])
            .arg(dir.path()),
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
}

#[test]
fn features_prints_runc_shaped_json() {
    let o = output_within(
        Command::new(husk_bin()).arg("features"),
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in [
        "ociVersionMin",
        "ociVersionMax",
        "mountOptions",
        "linux",
        "annotations",
    ] {
        assert!(v.get(key).is_some(), "features lacks {key}: {v}");
    }
    assert!(v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&"pid".into()));
    assert_eq!(
        v["hooks"],
        serde_json::json!([
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ])
    );
}

#[test]
fn list_of_an_empty_or_missing_root_is_a_header_or_an_empty_array() {
    let env = Env::new();
    let o = env.ok(["list"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("ID"), "{out}");
    for col in ["PID", "STATUS", "BUNDLE", "CREATED", "OWNER"] {
        assert!(out.contains(col), "{out}");
    }
    let o = env.ok(["list", "--format", "json"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
    let missing = env.root().join("not-there");
    let o = output_within(
        Command::new(husk_bin())
            .arg("--root")
            .arg(&missing)
            .args(["list", "-q"]),
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn unsupported_commands_and_bad_global_options_fail_with_status_1() {
    let env = Env::new();
    env.fails(["events", "x"], "not support");
    env.fails(["update", "x"], "not support");
    let o = output_within(
        Command::new(husk_bin()).args(["--log-format", "xml", "list"]),
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let o = output_within(
        Command::new(husk_bin()).arg("no-such-command"),
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
}
