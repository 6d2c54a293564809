//! The routes the listeners serve, the route tables in the code and `docs/openapi.json` agree,
//! and every error has the one JSON shape.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Cluster;
use serde_json::Value;

fn doc() -> Value {
    serde_json::from_str(corral::api::OPENAPI_JSON).expect("docs/openapi.json is JSON")
}

fn doc_routes(section: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, ops) in doc()[section].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            out.insert((method.clone(), path.clone()));
        }
    }
    out
}

fn table(t: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    t.iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect()
}

/// The OpenAPI document lists exactly the routes of the code's route tables.
#[test]
fn openapi_matches_route_tables() {
    assert_eq!(doc_routes("paths"), table(corral::api::ADMIN_ROUTES));
    assert_eq!(
        doc_routes("x-ingress-paths"),
        table(corral::ingress::INGRESS_ROUTES)
    );
}

/// Every documented admin route is actually routed by a running node (it never answers
/// `no_route`), the served document is the file, and unknown routes get the JSON error shape.
#[test]
fn live_node_serves_every_documented_route() {
    let mut c = Cluster::new(1, |t| t);
    c.start(1);
    c.wait_leader(&[1], Duration::from_secs(10));
    for (method, path) in corral::api::ADMIN_ROUTES {
        let path = path
            .replace("{key}", "contract-key")
            .replace("{name}", "contract-tenant")
            .replace("{id}", "contract-id");
        let url = c.url(1, &path);
        let req = match *method {
            "get" => c.http.get(&url),
            "put" => c.http.put(&url).json(&serde_json::json!({"v": 1})),
            "post" => c.http.post(&url),
            "delete" => c.http.delete(&url),
            other => panic!("unexpected method {other}"),
        };
        let resp = req.bearer_auth(&c.token).send().unwrap();
        let status = resp.status();
        let body = resp.text().unwrap();
        let code = serde_json::from_str::<Value>(&body)
            .ok()
            .map(|v| v["error"]["code"].clone());
        assert_ne!(
            code,
            Some(Value::from("no_route")),
            "{method} {path} is not routed: {status} {body}"
        );
    }
    let served: Value = c
        .http
        .get(c.url(1, "/admin/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(served, doc());
    let resp = c
        .http
        .get(c.url(1, "/admin/nope"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "no_route");
    assert!(body["error"]["message"].is_string());
}

/// Bad input gets a 400 naming the field, and nothing is written.
#[test]
fn bad_input_names_the_field() {
    let mut c = Cluster::new(1, |t| t);
    c.start(1);
    c.wait_leader(&[1], Duration::from_secs(10));
    let r = c
        .http
        .put(c.url(1, "/admin/config/bad%20key"))
        .bearer_auth(&c.token)
        .json(&1)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().unwrap()["error"]["field"], "key");
    let r = c
        .http
        .put(c.url(1, "/admin/config/good"))
        .bearer_auth(&c.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().unwrap()["error"]["field"], "body");
    let r = c
        .http
        .get(c.url(1, "/admin/config?limit=0"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["error"]["field"], "limit");
    let r = c
        .http
        .post(c.url(1, "/admin/cluster/transfer-leader"))
        .bearer_auth(&c.token)
        .json(&serde_json::json!({"to": 99}))
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["error"]["field"], "to");
    assert!(
        c.local_keys(1).unwrap().is_empty(),
        "a rejected request left something behind"
    );
}

/// Past a listener's in-flight cap a request is refused at once with 503 `overloaded` and
/// Retry-After, in the common error shape.
#[tokio::test]
async fn in_flight_cap_sheds_load_with_503() {
    let app = corral::api::limit_in_flight(
        axum::Router::new().route("/x", axum::routing::get(|| async { "ok" })),
        0,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let r = reqwest::get(format!("http://{addr}/x")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
}
