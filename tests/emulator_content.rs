//! Integration Content on an emulated tenant: package CRUD codes, upload of a base64 iFlow zip
//! (Id/Name/Version from MANIFEST.MF), byte-identical `$value` download, update, delete, deploy
//! (202 + task id), BuildAndDeployStatus, runtime artifacts STARTING -> STARTED | ERROR, 404 when
//! not deployed, and the deployed flow serving its `/http` address.

mod emulator_support;

use std::io::Write;

use base64::Engine;
use corral::emulator::TenantConfig;
use emulator_support::*;
use serde_json::{json, Value};

fn iflow_zip(id: &str, name: &str, version: &str, url_path: &str) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    w.start_file("META-INF/MANIFEST.MF", opts).unwrap();
    write!(
        w,
        "Manifest-Version: 1.0\r\nBundle-SymbolicName: {id}; singleton:=true\r\nBundle-Name: {name}\r\nBundle-Version: {version}\r\nSAP-BundleType: IntegrationFlow\r\nSAP-NodeType: IFLMAP\r\n"
    )
    .unwrap();
    w.start_file("metainfo.prop", opts).unwrap();
    w.write_all(b"description=test\n").unwrap();
    w.start_file(
        format!("src/main/resources/scenarioflows/integrationflow/{id}.iflw"),
        opts,
    )
    .unwrap();
    write!(w, "<bpmn2:definitions><ifl:property><key>ComponentType</key><value>HTTPS</value></ifl:property><ifl:property><key>urlPath</key><value>{url_path}</value></ifl:property></bpmn2:definitions>").unwrap();
    w.finish().unwrap().into_inner()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

async fn setup(
    delay_ms: u64,
) -> (
    corral::emulator::TenantHandle,
    corral::emulator::TenantDescription,
    reqwest::Client,
    String,
) {
    let mut cfg = TenantConfig::new("content");
    cfg.deploy_delay_ms = delay_ms;
    let (h, d) = start(cfg).await;
    let c = client();
    let tok = token(&c, &d).await;
    let r = c
        .post(format!("{}/IntegrationPackages", d.api_url))
        .bearer_auth(&tok)
        .json(&json!({"Id": "Pkg1", "Name": "Package One", "ShortText": "p", "Version": "1.0.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    (h, d, c, tok)
}

/// Packages: POST 201, duplicate 409, PUT 202, DELETE 202, missing 404.
#[tokio::test]
async fn package_status_codes() {
    let (_h, d, c, tok) = setup(0).await;
    let set = format!("{}/IntegrationPackages", d.api_url);
    let r = c
        .post(&set)
        .bearer_auth(&tok)
        .json(&json!({"Id": "Pkg1", "Name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        c.put(format!("{set}('Pkg1')"))
            .bearer_auth(&tok)
            .json(&json!({"Name": "y"}))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let (_, v) = get_json(&c, &format!("{set}('Pkg1')"), &tok).await;
    assert_eq!(v["d"]["Name"], "y");
    assert_eq!(
        c.delete(format!("{set}('Pkg1')"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        c.delete(format!("{set}('Pkg1')"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

/// Upload reads Id/Name/Version from the manifest; `$value` returns the exact bytes; a missing
/// package is 404, a duplicate Id 500; PUT with new content takes the new version; DELETE 200.
#[tokio::test]
async fn upload_download_round_trip_and_update() {
    let (_h, d, c, tok) = setup(0).await;
    let zip1 = iflow_zip("Orders_Flow", "Orders Flow", "1.0.3", "/orders");
    let set = format!("{}/IntegrationDesigntimeArtifacts", d.api_url);
    let r = c
        .post(&set)
        .bearer_auth(&tok)
        .json(&json!({"Name": "Orders Flow", "Id": "Orders_Flow", "PackageId": "Nope", "ArtifactContent": b64(&zip1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["message"]["value"],
        "Package ID Nope does not exist."
    );
    let r = c
        .post(&set)
        .bearer_auth(&tok)
        .json(&json!({"Name": "Orders Flow", "Id": "Orders_Flow", "PackageId": "Pkg1", "ArtifactContent": b64(&zip1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["d"]["Version"], "1.0.3");
    let r = c
        .post(&set)
        .bearer_auth(&tok)
        .json(&json!({"Name": "Orders Flow", "Id": "Orders_Flow", "PackageId": "Pkg1", "ArtifactContent": b64(&zip1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let one = format!(
        "{}/IntegrationDesigntimeArtifacts(Id='Orders_Flow',Version='active')",
        d.api_url
    );
    let got = c
        .get(format!("{one}/$value"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), zip1.as_slice(), "byte-identical download");
    let (_, v) = get_json(
        &c,
        &format!(
            "{}/IntegrationPackages('Pkg1')/IntegrationDesigntimeArtifacts",
            d.api_url
        ),
        &tok,
    )
    .await;
    assert_eq!(v["d"]["results"][0]["Name"], "Orders Flow");

    let zip2 = iflow_zip("Orders_Flow", "Orders Flow v2", "1.0.4", "/orders");
    let r = c
        .put(&one)
        .bearer_auth(&tok)
        .json(&json!({"ArtifactContent": b64(&zip2)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, v) = get_json(&c, &one, &tok).await;
    assert_eq!(v["d"]["Version"], "1.0.4");
    assert_eq!(v["d"]["Name"], "Orders Flow v2");
    let got = c
        .get(format!("{one}/$value"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), zip2.as_slice());
    let r = c
        .put(format!(
            "{}/IntegrationDesigntimeArtifacts(Id='Nope',Version='active')",
            d.api_url
        ))
        .bearer_auth(&tok)
        .json(&json!({"Name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        c.delete(&one)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(get_json(&c, &one, &tok).await.0, 404);
}

/// Deploy: 400 without quotes or for an unknown Id; 202 with a task id; runtime artifact is 404
/// before, STARTING, then STARTED with BuildAndDeployStatus SUCCESS; then `/http/orders` serves.
/// Undeploy returns 202 and the artifact is 404 again.
#[tokio::test]
async fn deploy_states_and_runtime() {
    let (_h, d, c, tok) = setup(400).await;
    let zip1 = iflow_zip("Orders_Flow", "Orders Flow", "1.0.0", "/orders");
    c.post(format!("{}/IntegrationDesigntimeArtifacts", d.api_url))
        .bearer_auth(&tok)
        .json(&json!({"Name": "Orders Flow", "Id": "Orders_Flow", "PackageId": "Pkg1", "ArtifactContent": b64(&zip1)}))
        .send()
        .await
        .unwrap();
    let rt = format!("{}/IntegrationRuntimeArtifacts('Orders_Flow')", d.api_url);
    let r = c.get(&rt).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("Requested entity could not be found"));
    let r = c
        .post(format!(
            "{}/DeployIntegrationDesigntimeArtifact?Id=Orders_Flow&Version=active",
            d.api_url
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "quotes are required");
    let r = c
        .post(format!(
            "{}/DeployIntegrationDesigntimeArtifact?Id='Unknown'&Version='active'",
            d.api_url
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(format!(
            "{}/DeployIntegrationDesigntimeArtifact?Id='Orders_Flow'&Version='active'",
            d.api_url
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let task = r.text().await.unwrap();
    let (_, v) = get_json(&c, &rt, &tok).await;
    assert_eq!(v["d"]["Status"], "STARTING");
    let (_, v) = get_json(
        &c,
        &format!("{}/BuildAndDeployStatus(TaskId='{task}')", d.api_url),
        &tok,
    )
    .await;
    assert_eq!(v["d"]["Status"], "DEPLOYING");
    poll("STARTED", POLL_DEADLINE_MS, || {
        let c = c.clone();
        let rt = rt.clone();
        let tok = tok.clone();
        async move { (get_json(&c, &rt, &tok).await.1["d"]["Status"] == "STARTED").then_some(()) }
    })
    .await;
    let (_, v) = get_json(&c, &rt, &tok).await;
    assert_eq!(v["d"]["Version"], "1.0.0");
    assert_eq!(v["d"]["Type"], "INTEGRATION_FLOW");
    let (_, v) = get_json(
        &c,
        &format!("{}/BuildAndDeployStatus(TaskId='{task}')", d.api_url),
        &tok,
    )
    .await;
    assert_eq!(v["d"]["Status"], "SUCCESS");
    let (s, _) = get_json(
        &c,
        &format!("{}/BuildAndDeployStatus(TaskId='nope')", d.api_url),
        &tok,
    )
    .await;
    assert_eq!(s, 404);
    let r = c
        .get(format!("{rt}/ErrorInformation/$value"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .post(format!("{}/http/Orders", d.runtime_url))
        .bearer_auth(&tok)
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hi");
    let (_, v) = get_json(&c, &format!("{}/ServiceEndpoints", d.api_url), &tok).await;
    assert!(v.to_string().contains("/http/orders"));

    assert_eq!(
        c.delete(&rt)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    poll("undeployed", POLL_DEADLINE_MS, || {
        let c = c.clone();
        let rt = rt.clone();
        let tok = tok.clone();
        async move { (get_json(&c, &rt, &tok).await.0 == 404).then_some(()) }
    })
    .await;
}

/// A second flow with the same `/http` address ends in ERROR with the reason in ErrorInformation;
/// chaos deploy_error makes the task FAIL.
#[tokio::test]
async fn duplicate_address_and_deploy_error() {
    let (_h, d, c, tok) = setup(0).await;
    for id in ["FlowA", "FlowB"] {
        c.post(format!("{}/IntegrationDesigntimeArtifacts", d.api_url))
            .bearer_auth(&tok)
            .json(&json!({"Name": id, "Id": id, "PackageId": "Pkg1", "ArtifactContent": b64(&iflow_zip(id, id, "1.0.0", "/same"))}))
            .send()
            .await
            .unwrap();
        let r = c
            .post(format!(
                "{}/DeployIntegrationDesigntimeArtifact?Id='{id}'&Version='active'",
                d.api_url
            ))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let rt = format!("{}/IntegrationRuntimeArtifacts('FlowB')", d.api_url);
    let (_, v) = get_json(&c, &rt, &tok).await;
    assert_eq!(v["d"]["Status"], "ERROR");
    let (_, v) = get_json(&c, &format!("{rt}/ErrorInformation/$value"), &tok).await;
    assert!(v["parameter"][0].as_str().unwrap().contains("/same"));
    let (_, v) = get_json(
        &c,
        &format!(
            "{}/IntegrationRuntimeArtifacts?$filter=Status eq 'ERROR'",
            d.api_url
        ),
        &tok,
    )
    .await;
    assert_eq!(v["d"]["results"].as_array().unwrap().len(), 1);

    c.put(format!("{}/chaos", d.control_url))
        .json(&json!({"deploy_error": true}))
        .send()
        .await
        .unwrap();
    let r = c
        .post(format!(
            "{}/DeployIntegrationDesigntimeArtifact?Id='FlowA'&Version='active'",
            d.api_url
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    let task = r.text().await.unwrap();
    let (_, v) = get_json(
        &c,
        &format!("{}/BuildAndDeployStatus(TaskId='{task}')", d.api_url),
        &tok,
    )
    .await;
    assert_eq!(v["d"]["Status"], "FAIL");
    let (_, v) = get_json(
        &c,
        &format!("{}/IntegrationRuntimeArtifacts('FlowA')", d.api_url),
        &tok,
    )
    .await;
    assert_eq!(v["d"]["Status"], "ERROR");
}
