//! Message processing logs (cpi-api.md §5): one MPL per runtime run, and the read-only
//! `/api/v1/MessageProcessingLogs` API with CPI's filters (UTC `datetime'...'` literals, Id
//! filters only with `eq`), its restricted `$orderby` values, `$select`, `$inlinecount`, `$top`,
//! `$skip`, 1000-row pages, `/$count`, single reads and `ErrorInformation/$value`.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::api::ApiRequest;
use super::odata::{self, CmpOp, Key};
use super::runtime::RuntimeFlow;
use super::tenant::{message_guid, random_hex, Tenant};

/// Most MPLs kept per tenant; the oldest are dropped beyond it.
pub const MAX_MPLS_RETAINED: usize = 200_000;
/// Characters of `SAP_ApplicationID` kept in `ApplicationMessageId`.
pub const MAX_APPLICATION_ID_CHARS: usize = 120;

/// `$orderby` values the real API accepts.
pub const ALLOWED_ORDERBY: &[&str] = &[
    "LogEnd",
    "LogEnd desc",
    "LogStart",
    "LogStart desc",
    "Status,LogEnd desc",
    "ApplicationMessageId",
];
/// Fields `$filter` accepts.
pub const FILTERABLE: &[&str] = &[
    "Status",
    "CustomStatus",
    "LogStart",
    "LogEnd",
    "Sender",
    "Receiver",
    "ApplicationMessageType",
    "IntegrationFlowName",
    "IntegrationArtifact/Id",
    "LogLevel",
    "MessageGuid",
    "CorrelationId",
    "ApplicationMessageId",
];
const ID_FIELDS: &[&str] = &["MessageGuid", "CorrelationId", "ApplicationMessageId"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MplStatus {
    Processing,
    Completed,
    Failed,
}

impl MplStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MplStatus::Processing => "PROCESSING",
            MplStatus::Completed => "COMPLETED",
            MplStatus::Failed => "FAILED",
        }
    }
}

/// One message processing log.
#[derive(Debug, Clone)]
pub struct Mpl {
    pub guid: String,
    pub correlation_id: String,
    pub application_message_id: Option<String>,
    pub sender: Option<String>,
    pub receiver: Option<String>,
    pub flow_id: String,
    pub flow_name: String,
    pub package_id: Option<String>,
    pub package_name: Option<String>,
    pub status: MplStatus,
    pub log_start_ms: i64,
    pub log_end_ms: Option<i64>,
    pub transaction_id: String,
    pub error: Option<String>,
    pub user: String,
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl Mpl {
    /// A PROCESSING MPL for a run of `flow` starting now.
    pub fn start(t: &Tenant, flow: &RuntimeFlow, h: &HeaderMap, user: &str) -> Mpl {
        Mpl {
            guid: message_guid(),
            correlation_id: header_str(h, "SAP_MplCorrelationId").unwrap_or_else(message_guid),
            application_message_id: header_str(h, "SAP_ApplicationID")
                .map(|s| s.chars().take(MAX_APPLICATION_ID_CHARS).collect()),
            sender: header_str(h, "SAP_Sender"),
            receiver: header_str(h, "SAP_Receiver"),
            flow_id: flow.name.clone(),
            flow_name: flow.display_name.clone(),
            package_id: flow.package_id.clone(),
            package_name: flow.package_name.clone(),
            status: MplStatus::Processing,
            log_start_ms: t.now_ms(),
            log_end_ms: None,
            transaction_id: random_hex(16),
            error: None,
            user: user.to_string(),
        }
    }

    pub fn to_json(&self, api_url: &str, tenant: &str) -> Value {
        let uri = format!("{api_url}/MessageProcessingLogs('{}')", self.guid);
        let host = api_url.trim_end_matches("/api/v1");
        json!({
            "__metadata": odata::metadata(&uri, "com.sap.hci.api.MessageProcessingLog"),
            "MessageGuid": self.guid,
            "CorrelationId": self.correlation_id,
            "ApplicationMessageId": self.application_message_id,
            "ApplicationMessageType": null,
            "PredecessorMessageGuid": null,
            "LogStart": odata::date(self.log_start_ms),
            "LogEnd": self.log_end_ms.map(odata::date),
            "Sender": self.sender,
            "Receiver": self.receiver,
            "IntegrationFlowName": self.flow_id,
            "Status": self.status.as_str(),
            "AlternateWebLink": format!("{host}/shell/monitoring/Messages/%7B%22identifier%22%3A%22{}%22%7D", self.guid),
            "IntegrationArtifact": {
                "__metadata": {"type": "com.sap.hci.api.IntegrationArtifact"},
                "Id": self.flow_id, "Name": self.flow_name, "Type": "INTEGRATION_FLOW",
                "PackageId": self.package_id, "PackageName": self.package_name,
            },
            "LogLevel": "INFO",
            "CustomStatus": self.status.as_str(),
            "ArchivingStatus": "NOT_RELEVANT",
            "ArchivingSenderChannelMessages": false,
            "ArchivingReceiverChannelMessages": false,
            "ArchivingLogAttachments": false,
            "ArchivingPersistedMessages": false,
            "TransactionId": self.transaction_id,
            "PreviousComponentName": format!("CPI_{tenant}"),
            "LocalComponentName": format!("CPI_{tenant}"),
            "OriginComponentName": format!("CPI_{tenant}"),
            "CustomHeaderProperties": odata::deferred(&format!("{uri}/CustomHeaderProperties")),
            "MessageStoreEntries": odata::deferred(&format!("{uri}/MessageStoreEntries")),
            "ErrorInformation": odata::deferred(&format!("{uri}/ErrorInformation")),
            "AdapterAttributes": odata::deferred(&format!("{uri}/AdapterAttributes")),
            "Attachments": odata::deferred(&format!("{uri}/Attachments")),
            "Runs": odata::deferred(&format!("{uri}/Runs")),
        })
    }
}

/// The tenant's MPLs in creation order.
#[derive(Debug, Default)]
pub struct MplStore {
    entries: VecDeque<Mpl>,
}

impl MplStore {
    pub fn insert(&mut self, m: Mpl) {
        if self.entries.len() >= MAX_MPLS_RETAINED {
            self.entries.pop_front();
        }
        self.entries.push_back(m);
    }

    pub fn finish(&mut self, guid: &str, status: MplStatus, error: Option<String>, now_ms: i64) {
        if let Some(m) = self.entries.iter_mut().rev().find(|m| m.guid == guid) {
            m.status = status;
            m.error = error;
            m.log_end_ms = Some(now_ms.max(m.log_start_ms));
        }
    }

    pub fn get(&self, guid: &str) -> Option<&Mpl> {
        self.entries.iter().rev().find(|m| m.guid == guid)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn iter(&self) -> impl Iterator<Item = &Mpl> {
        self.entries.iter()
    }
}

fn visible(t: &Tenant) -> Vec<Mpl> {
    let cutoff = t.now_ms() - t.cfg.mpl_visibility_delay_ms as i64;
    let st = t.lock();
    st.mpls
        .iter()
        .filter(|m| m.log_start_ms <= cutoff)
        .cloned()
        .collect()
}

/// `/api/v1/MessageProcessingLogs...`
pub fn handle(t: &Arc<Tenant>, r: &ApiRequest) -> Response {
    if let Err(e) = r.require("MonitoringDataRead") {
        return e;
    }
    if r.method != Method::GET && r.method != Method::HEAD {
        return odata::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Message processing logs are read-only.",
        );
    }
    let api_url = t.api_url();
    let name = t.cfg.name.clone();
    let first = &r.segs[0];
    match (
        &first.key,
        r.segs.get(1).map(|s| s.name.as_str()),
        r.segs.get(2).map(|s| s.name.as_str()),
    ) {
        (None, None, _) | (None, Some("$count"), None) => {
            let filter = match &r.q.filter {
                Some(f) => match odata::parse_filter(f) {
                    Ok(f) => Some(f),
                    Err(e) => return e.into_response(),
                },
                None => None,
            };
            if let Some(f) = &filter {
                let cmps = f.comparisons();
                for (field, op) in &cmps {
                    if !FILTERABLE.contains(field) {
                        return odata::error(
                            StatusCode::BAD_REQUEST,
                            &format!("Filtering on property '{field}' is not supported."),
                        );
                    }
                    if ID_FIELDS.contains(field) && *op != CmpOp::Eq {
                        return odata::error(
                            StatusCode::BAD_REQUEST,
                            &format!("Only the 'eq' operator is supported for property '{field}'."),
                        );
                    }
                }
            }
            let orderby = match &r.q.orderby {
                Some(o) => {
                    let norm: String = o
                        .split(',')
                        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
                        .collect::<Vec<_>>()
                        .join(",");
                    if !ALLOWED_ORDERBY.contains(&norm.as_str()) {
                        return odata::error(
                            StatusCode::BAD_REQUEST,
                            &format!("Unsupported $orderby value '{o}'."),
                        );
                    }
                    match odata::parse_orderby(&norm) {
                        Ok(k) => Some(k),
                        Err(e) => return e.into_response(),
                    }
                }
                None => None,
            };
            let mut items: Vec<Value> = visible(t)
                .iter()
                .map(|m| m.to_json(&api_url, &name))
                .collect();
            if let Some(f) = &filter {
                // IntegrationFlowName is rewritten to IntegrationArtifact/Id, which holds the same value.
                items.retain(|e| f.matches(e));
            }
            if r.segs.len() == 2 {
                return odata::count_response(items.len());
            }
            odata::collection_response(
                items,
                &r.q,
                &format!("{api_url}/MessageProcessingLogs"),
                None,
                orderby.as_deref(),
            )
        }
        (Some(Key::Single(guid)), nav, nav2) => {
            let all = visible(t);
            let Some(m) = all.iter().find(|m| &m.guid == guid) else {
                return odata::error(
                    StatusCode::NOT_FOUND,
                    "Requested entity could not be found.",
                );
            };
            match (nav, nav2) {
                (None, None) => odata::entity_response(
                    StatusCode::OK,
                    odata::select(m.to_json(&api_url, &name), &r.q.select),
                ),
                (Some("ErrorInformation"), Some("$value")) => match &m.error {
                    Some(e) => (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "text/plain;charset=utf-8")],
                        e.clone(),
                    )
                        .into_response(),
                    None => StatusCode::NO_CONTENT.into_response(),
                },
                (Some("ErrorInformation"), None) => match &m.error {
                    Some(_) => odata::entity_response(
                        StatusCode::OK,
                        json!({
                        "__metadata": {"type": "com.sap.hci.api.MessageProcessingLogErrorInformation"},
                        "MessageGuid": m.guid, "Type": "ERROR", "LastErrorModelStepId": null}),
                    ),
                    None => StatusCode::NO_CONTENT.into_response(),
                },
                (
                    Some(
                        "CustomHeaderProperties"
                        | "AdapterAttributes"
                        | "Attachments"
                        | "MessageStoreEntries"
                        | "Runs",
                    ),
                    None,
                ) => odata::json_response(StatusCode::OK, &json!({"d": {"results": []}})),
                _ => odata::error(StatusCode::NOT_FOUND, "Resource not found."),
            }
        }
        _ => odata::error(StatusCode::NOT_FOUND, "Resource not found."),
    }
}
