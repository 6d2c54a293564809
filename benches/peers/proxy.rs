//! The sync-proxy section: one backend (a tiny hyper server in this process, on its own
//! runtime thread, answering every request 200 with a fixed body), called directly (the
//! baseline), through HAProxy, through nginx and through corral's sync route. HAProxy and nginx
//! are single processes (they do not cluster); both keep connections to the backend alive.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::load::Op;
use crate::procs::{ports_free, wait_tcp, Proc};

pub const BACKEND: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(LOCAL), 24281);
const HAPROXY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(LOCAL), 24282);
const NGINX: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(LOCAL), 24283);
const LOCAL: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;
/// What the backend answers: small, so the section measures proxying, not bandwidth.
const BACKEND_BODY: &[u8] = b"{\"ok\":true}";
/// Idle keep-alive connections each proxy keeps to the backend.
const UPSTREAM_KEEPALIVE: u32 = 128;
/// Worker threads (HAProxy) / processes (nginx): the box's two cores.
const PROXY_THREADS: u32 = 2;

/// Starts the backend on a thread with its own single-threaded runtime; it serves until the
/// process exits (it is ours, in-process: nothing to stop).
pub fn start_backend() -> Result<(), String> {
    let listener = std::net::TcpListener::bind(BACKEND).map_err(|e| format!("{BACKEND}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("backend".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("backend runtime");
            rt.block_on(serve(listener));
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

async fn serve(listener: std::net::TcpListener) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BACKEND_BODY))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

/// GET `urls[worker % len]`; acknowledged by a 2xx with its body read.
pub fn get_op(http: reqwest::Client, urls: Vec<String>) -> Op {
    let urls = Arc::new(urls);
    Arc::new(move |w, _| {
        let (http, urls) = (http.clone(), urls.clone());
        Box::pin(async move {
            let r = http
                .get(&urls[w % urls.len()])
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status();
            r.bytes().await.map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        })
    })
}

pub fn direct_url() -> String {
    format!("http://{BACKEND}/http/bench/ping")
}

pub fn haproxy_url() -> String {
    format!("http://{HAPROXY}/http/bench/ping")
}

pub fn nginx_url() -> String {
    format!("http://{NGINX}/http/bench/ping")
}

pub async fn start_haproxy(dir: &Path) -> Result<Proc, String> {
    ports_free(&[HAPROXY])?;
    let conf = format!(
        "global\n  maxconn 4096\n  nbthread {PROXY_THREADS}\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend f\n  bind {HAPROXY}\n  default_backend b\n\
         backend b\n  http-reuse always\n  server s1 {BACKEND} maxconn 1024\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let mut p = Proc::spawn("haproxy", cmd, &dir.join("haproxy.log"))?;
    if let Err(e) = wait_tcp(HAPROXY, Duration::from_secs(10)).await {
        // An exit explains more than the timeout: say why, with the log's tail.
        p.check_alive()?;
        return Err(e);
    }
    p.check_alive()?;
    Ok(p)
}

pub async fn start_nginx(dir: &Path) -> Result<Proc, String> {
    ports_free(&[NGINX])?;
    let d = dir.display();
    // SAFETY: geteuid(2) has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;\n"
    } else {
        ""
    };
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes {PROXY_THREADS};\n{user}\
         pid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 10000; }}\n\
         http {{\n  access_log off;\n\
           client_body_temp_path {d}/nginx-body;\n  proxy_temp_path {d}/nginx-proxy;\n\
           fastcgi_temp_path {d}/nginx-fcgi;\n  uwsgi_temp_path {d}/nginx-uwsgi;\n\
           scgi_temp_path {d}/nginx-scgi;\n\
           upstream b {{ server {BACKEND}; keepalive {UPSTREAM_KEEPALIVE}; }}\n\
           server {{ listen {NGINX}; location / {{ proxy_pass http://b; \
             proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.join("nginx-error.log"));
    let mut p = Proc::spawn("nginx", cmd, &dir.join("nginx.log"))?;
    if let Err(e) = wait_tcp(NGINX, Duration::from_secs(10)).await {
        // An exit explains more than the timeout: say why, with the log's tail.
        p.check_alive()?;
        return Err(e);
    }
    p.check_alive()?;
    Ok(p)
}
