//! Listeners: binds a tenant's two sockets and serves them with hyper.
//!
//! The tenant listener can be switched "down" by the control API: the listening socket is closed
//! (new connections are refused) and open connections are dropped; switching it "up" rebinds the
//! same port. The control listener is never switched off, so the harness can always reach it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{EmulatorError, TenantConfig, TenantHandle};
use crate::emulator::tenant::Tenant;

/// How long re-binding a port after "up" is retried before giving up, ms.
const REBIND_TIMEOUT_MS: u64 = 10_000;
/// Pause between re-bind attempts, ms.
const REBIND_RETRY_MS: u64 = 20;

async fn bind(host: &str, port: u16) -> Result<TcpListener, EmulatorError> {
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr)
        .await
        .map_err(|source| EmulatorError::Bind { addr, source })
}

pub(crate) async fn spawn(cfg: TenantConfig) -> Result<TenantHandle, EmulatorError> {
    let listener = bind(&cfg.host, cfg.port).await?;
    let control = bind(&cfg.host, cfg.control_port).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| EmulatorError::Bind {
            addr: cfg.host.clone(),
            source,
        })?;
    let control_addr = control.local_addr().map_err(|source| EmulatorError::Bind {
        addr: cfg.host.clone(),
        source,
    })?;
    let tenant = Arc::new(Tenant::new(cfg, addr, control_addr)?);
    let (stop_tx, stop_rx) = watch::channel(());
    let main_router = crate::emulator::api::tenant_router(tenant.clone());
    let control_router = crate::emulator::control::router(tenant.clone());
    let up_rx = tenant.up_desired.subscribe();
    let t2 = tenant.clone();
    let main_task = tokio::spawn(serve_switchable(
        listener,
        addr,
        main_router,
        up_rx,
        stop_rx.clone(),
        t2,
    ));
    let control_task = tokio::spawn(serve_always(control, control_router, stop_rx));
    Ok(TenantHandle {
        tenant,
        stop: stop_tx,
        tasks: vec![main_task, control_task],
    })
}

fn serve_conn(conns: &mut JoinSet<()>, stream: TcpStream, router: &Router) {
    let svc = TowerToHyperService::new(router.clone());
    conns.spawn(async move {
        let _ = stream.set_nodelay(true);
        let _ = Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .await;
    });
}

async fn serve_always(listener: TcpListener, router: Router, mut stop: watch::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            acc = listener.accept() => {
                if let Ok((stream, _)) = acc {
                    serve_conn(&mut conns, stream, &router);
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.changed() => return,
        }
    }
}

async fn serve_switchable(
    first: TcpListener,
    addr: SocketAddr,
    router: Router,
    mut up: watch::Receiver<bool>,
    mut stop: watch::Receiver<()>,
    tenant: Arc<Tenant>,
) {
    let mut listener = Some(first);
    loop {
        if let Some(l) = listener.take() {
            tenant.up_actual.send_replace(true);
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    acc = l.accept() => {
                        if let Ok((stream, _)) = acc {
                            serve_conn(&mut conns, stream, &router);
                        }
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    ch = up.changed() => {
                        if ch.is_err() { return; }
                        if !*up.borrow_and_update() { break; }
                    }
                    _ = stop.changed() => return,
                }
            }
            drop(l);
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        }
        tenant.up_actual.send_replace(false);
        // Down: wait for "up".
        loop {
            if *up.borrow_and_update() {
                break;
            }
            tokio::select! {
                ch = up.changed() => { if ch.is_err() { return; } }
                _ = stop.changed() => return,
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(REBIND_TIMEOUT_MS);
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::error!(%addr, error = %e, "emulator: cannot rebind tenant port");
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(REBIND_RETRY_MS)).await,
            }
        }
    }
}
