//! Runs the built binary: `corral emulate --tenants 2` prints one JSON description per tenant with
//! the field names corral's tenant pool registers from, and the tenants answer. Kills only its child.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Kills the child it owns when dropped, so a failing assertion never leaks the process.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two tenants on distinct ports with distinct credentials; each accepts its own token and serves
/// the pre-deployed flows (`--flow orders=echo,idempotent` plus the default `/http/echo`).
#[test]
fn emulate_prints_json_lines_and_serves() {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_corral"))
            .args([
                "emulate",
                "--tenants",
                "2",
                "--base-port",
                "0",
                "--flow",
                "orders=echo,idempotent",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn corral emulate"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut tenants = Vec::new();
    for _ in 0..2 {
        let line = lines.next().expect("a line").expect("read line");
        let v: Value = serde_json::from_str(&line).expect("JSON line");
        for k in [
            "name",
            "runtime_url",
            "api_url",
            "token_url",
            "client_id",
            "client_secret",
            "control_url",
        ] {
            assert!(v[k].is_string(), "field {k} in {line}");
        }
        assert!(v["api_url"].as_str().unwrap().ends_with("/api/v1"));
        assert!(v["token_url"].as_str().unwrap().ends_with("/oauth/token"));
        assert!(v["control_url"].as_str().unwrap().ends_with("/_emulator"));
        tenants.push(v);
    }
    assert_ne!(tenants[0]["runtime_url"], tenants[1]["runtime_url"]);
    assert_ne!(tenants[0]["client_secret"], tenants[1]["client_secret"]);

    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for t in &tenants {
        let tok: Value = c
            .post(format!(
                "{}?grant_type=client_credentials",
                t["token_url"].as_str().unwrap()
            ))
            .basic_auth(
                t["client_id"].as_str().unwrap(),
                t["client_secret"].as_str(),
            )
            .send()
            .unwrap()
            .json()
            .unwrap();
        let tok = tok["access_token"].as_str().unwrap();
        for path in ["echo", "orders"] {
            let r = c
                .post(format!(
                    "{}/http/{path}",
                    t["runtime_url"].as_str().unwrap()
                ))
                .bearer_auth(tok)
                .header("X-Message-ID", "cli-1")
                .body("ping")
                .send()
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().unwrap(), "ping");
        }
        let v: Value = c
            .get(format!(
                "{}/counters/cli-1",
                t["control_url"].as_str().unwrap()
            ))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(v["counters"]["processed"], 2);
    }
}
