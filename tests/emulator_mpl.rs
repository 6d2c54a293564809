//! Message processing logs: one MPL per run with CPI's fields, `$filter` with UTC `datetime'...'`
//! literals (zone suffixes rejected), Id filters only with `eq`, the restricted `$orderby`,
//! `$select`, `$inlinecount` (a string), `$top`/`$skip`, 1000-row pages with `__next`, `/$count`.

mod emulator_support;

use corral::emulator::{FlowSpec, TenantConfig};
use emulator_support::*;
use serde_json::Value;

async fn setup() -> (
    corral::emulator::TenantHandle,
    corral::emulator::TenantDescription,
    reqwest::Client,
    String,
) {
    let mut cfg = TenantConfig::new("mpl");
    let mut fail = FlowSpec::echo("/fail");
    fail.behaviour = corral::emulator::Behaviour::Fail;
    cfg.flows.push(("failing".into(), fail));
    let (h, d) = start(cfg).await;
    let c = client();
    let tok = token(&c, &d).await;
    (h, d, c, tok)
}

async fn call(
    c: &reqwest::Client,
    d: &corral::emulator::TenantDescription,
    tok: &str,
    path: &str,
    app_id: &str,
) -> String {
    let r = c
        .post(format!("{}/http/{path}", d.runtime_url))
        .bearer_auth(tok)
        .header("SAP_ApplicationID", app_id)
        .body("x")
        .send()
        .await
        .unwrap();
    r.headers()["sap_messageprocessinglogid"]
        .to_str()
        .unwrap()
        .to_string()
}

/// Each run writes one MPL with CPI's fields; the failed run's error text is at ErrorInformation/$value.
#[tokio::test]
async fn one_mpl_per_run_with_fields() {
    let (_h, d, c, tok) = setup().await;
    let ok = call(&c, &d, &tok, "echo", "app-1").await;
    let bad = call(&c, &d, &tok, "fail", "app-2").await;
    let (s, v) = get_json(
        &c,
        &format!("{}/MessageProcessingLogs('{ok}')", d.api_url),
        &tok,
    )
    .await;
    assert_eq!(s, 200);
    let e = &v["d"];
    assert_eq!(e["Status"], "COMPLETED");
    assert_eq!(e["ApplicationMessageId"], "app-1");
    assert_eq!(e["IntegrationArtifact"]["Id"], "echo");
    assert_eq!(e["IntegrationArtifact"]["Type"], "INTEGRATION_FLOW");
    assert_eq!(
        e["__metadata"]["type"],
        "com.sap.hci.api.MessageProcessingLog"
    );
    assert!(e["LogStart"].as_str().unwrap().starts_with("/Date("));
    assert!(e["LogEnd"].as_str().unwrap().starts_with("/Date("));
    assert_eq!(e["CorrelationId"].as_str().unwrap().len(), 28);
    let (_, v) = get_json(
        &c,
        &format!("{}/MessageProcessingLogs('{bad}')", d.api_url),
        &tok,
    )
    .await;
    assert_eq!(v["d"]["Status"], "FAILED");
    let r = c
        .get(format!(
            "{}/MessageProcessingLogs('{bad}')/ErrorInformation/$value",
            d.api_url
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!(
            "{}/MessageProcessingLogs('{ok}')/ErrorInformation/$value",
            d.api_url
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .get(format!("{}/MessageProcessingLogs('Anope')", d.api_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// Filters: Status, datetime literals in UTC, Id `eq`; a zone suffix and a non-eq Id filter get 400;
/// `__count` is a string; `$count` is plain text; `$select` trims fields.
#[tokio::test]
async fn filters_and_count() {
    let (_h, d, c, tok) = setup().await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    for i in 0..3 {
        call(&c, &d, &tok, "echo", &format!("ok-{i}")).await;
    }
    call(&c, &d, &tok, "fail", "bad").await;
    let lit = before.format("%Y-%m-%dT%H:%M:%S%.3f").to_string();
    let base = format!("{}/MessageProcessingLogs", d.api_url);
    let (s, v) = get_json(
        &c,
        &format!("{base}?$inlinecount=allpages&$filter=Status eq 'COMPLETED' and LogStart gt datetime'{lit}'&$format=json"),
        &tok,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["d"]["__count"], "3");
    assert_eq!(v["d"]["results"].as_array().unwrap().len(), 3);
    let (_, v) = get_json(&c, &format!("{base}?$filter=Status eq 'FAILED' or ApplicationMessageId eq 'ok-1'&$inlinecount=allpages"), &tok).await;
    assert_eq!(v["d"]["__count"], "2");
    let future = (chrono::Utc::now() + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let (_, v) = get_json(
        &c,
        &format!("{base}?$filter=LogEnd gt datetime'{future}'"),
        &tok,
    )
    .await;
    assert_eq!(v["d"]["results"].as_array().unwrap().len(), 0);
    let (s, _) = get_json(
        &c,
        &format!("{base}?$filter=LogEnd gt datetime'{future}Z'"),
        &tok,
    )
    .await;
    assert_eq!(s, 400, "zone suffix is rejected");
    let (s, _) = get_json(&c, &format!("{base}?$filter=MessageGuid ne 'x'"), &tok).await;
    assert_eq!(s, 400, "Id filters only with eq");
    let (s, v) = get_json(
        &c,
        &format!("{base}?$filter=ApplicationMessageId eq 'bad'&$select=MessageGuid,Status"),
        &tok,
    )
    .await;
    assert_eq!(s, 200);
    let e = &v["d"]["results"][0];
    assert_eq!(e["Status"], "FAILED");
    assert!(e.get("LogStart").is_none());
    let r = c
        .get(format!("{base}/$count?$filter=Status eq 'COMPLETED'"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "3");
}

/// `$orderby` accepts only CPI's documented values; `LogStart desc` orders newest first.
#[tokio::test]
async fn orderby_restricted() {
    let (_h, d, c, tok) = setup().await;
    let first = call(&c, &d, &tok, "echo", "a").await;
    let last = poll("a later LogStart", POLL_DEADLINE_MS, || {
        let c = c.clone();
        let d = d.clone();
        let tok = tok.clone();
        let first = first.clone();
        async move {
            let g = call(&c, &d, &tok, "echo", "b").await;
            let (_, v) = get_json(
                &c,
                &format!(
                    "{}/MessageProcessingLogs?$orderby=LogStart desc&$top=1",
                    d.api_url
                ),
                &tok,
            )
            .await;
            (v["d"]["results"][0]["MessageGuid"] == g.as_str() && g != first).then_some(g)
        }
    })
    .await;
    let (_, v) = get_json(
        &c,
        &format!(
            "{}/MessageProcessingLogs?$orderby=LogStart&$top=1",
            d.api_url
        ),
        &tok,
    )
    .await;
    assert_eq!(v["d"]["results"][0]["MessageGuid"], first.as_str());
    assert_ne!(first, last);
    let (s, _) = get_json(
        &c,
        &format!("{}/MessageProcessingLogs?$orderby=Status", d.api_url),
        &tok,
    )
    .await;
    assert_eq!(s, 400);
}

/// Server-side paging: 1001 MPLs come back as 1000 plus a `__next` link with `$skiptoken`, which
/// yields the last one; `$top`/`$skip` page too.
#[tokio::test]
async fn paging_1000_rows_and_next() {
    let (_h, d, c, tok) = setup().await;
    let mut tasks = Vec::new();
    for i in 0..1001 {
        let c = c.clone();
        let url = format!("{}/http/echo", d.runtime_url);
        let tok = tok.clone();
        tasks.push(tokio::spawn(async move {
            c.post(url)
                .bearer_auth(tok)
                .header("SAP_ApplicationID", format!("p{i}"))
                .body("x")
                .send()
                .await
                .unwrap()
                .status()
        }));
        if tasks.len() >= 32 {
            for t in tasks.drain(..) {
                assert!(t.await.unwrap().is_success());
            }
        }
    }
    for t in tasks {
        assert!(t.await.unwrap().is_success());
    }
    let (_, v) = get_json(
        &c,
        &format!(
            "{}/MessageProcessingLogs?$inlinecount=allpages&$orderby=LogEnd desc",
            d.api_url
        ),
        &tok,
    )
    .await;
    assert_eq!(v["d"]["__count"], "1001");
    assert_eq!(v["d"]["results"].as_array().unwrap().len(), 1000);
    let next = v["d"]["__next"].as_str().expect("__next").to_string();
    assert!(next.contains("$skiptoken=1000") || next.contains("%24skiptoken=1000"));
    let (_, v2) = get_json(&c, &next, &tok).await;
    assert_eq!(v2["d"]["results"].as_array().unwrap().len(), 1);
    assert!(v2["d"].get("__next").is_none());
    let (_, v) = get_json(
        &c,
        &format!("{}/MessageProcessingLogs?$top=10&$skip=995", d.api_url),
        &tok,
    )
    .await;
    assert_eq!(v["d"]["results"].as_array().unwrap().len(), 6);
    let all: Value = v;
    assert!(all["d"].get("__next").is_none());
}

/// MPLs become visible only after the configured visibility lag.
#[tokio::test]
async fn visibility_delay() {
    let mut cfg = TenantConfig::new("mplvis");
    cfg.mpl_visibility_delay_ms = 300;
    let (_h, d) = start(cfg).await;
    let c = client();
    let tok = token(&c, &d).await;
    let g = call(&c, &d, &tok, "echo", "v").await;
    let url = format!("{}/MessageProcessingLogs('{g}')", d.api_url);
    let (s, _) = get_json(&c, &url, &tok).await;
    assert_eq!(s, 404);
    poll("MPL visible", POLL_DEADLINE_MS, || {
        let c = c.clone();
        let url = url.clone();
        let tok = tok.clone();
        async move { (get_json(&c, &url, &tok).await.0 == 200).then_some(()) }
    })
    .await;
}
