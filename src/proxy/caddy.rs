//! [`Routes`] written into a running Caddy through its admin API, for teams that keep Caddy at
//! the edge. Dropship owns one Caddy server, `dropship`, and leaves the rest of Caddy's
//! configuration alone.
//!
//! A switch replaces that server's routes (the routes are kept in Dropship's store, so every
//! change writes the whole, consistent set); Caddy finishes requests already in flight on the
//! old configuration. The drain waits until Caddy's `/reverse_proxy/upstreams` reports no
//! request in flight to the replaced upstreams.
//!
//! Caddy counts requests per upstream address, shared by every configuration that names the
//! address, and forgets an address once no configuration names it: its old configuration
//! lets go of an upstream while requests to it are still in flight (Caddy 2.6, seen in the
//! switch tests). So while an upstream drains, the written configuration keeps naming it, in
//! a route that never matches ([`DRAINING`]), and its count stays to be read.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Drain, RouteKey, RouteSpec, Routes, UpstreamSpec};
use crate::config::{Balance, ProxySection};
use crate::store::{RouteRecord, Store};

/// The Caddy server Dropship owns.
const SERVER: &str = "dropship";
/// The `@id` of the route that keeps draining upstreams known to Caddy; it matches nothing.
const DRAINING: &str = "dropship-draining";
/// The longest a call to Caddy's admin API may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two looks at Caddy's in-flight counts while draining.
const DRAIN_POLL: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct Caddy {
    admin: String,
    settings: ProxySection,
    store: Arc<dyn Store>,
    client: reqwest::Client,
    /// Serializes changes.
    changes: Arc<tokio::sync::Mutex<()>>,
    /// The addresses of replaced upstreams still draining, once per drain: named in the
    /// [`DRAINING`] route. Each drain takes its addresses out when it is dropped.
    draining: Arc<std::sync::Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Caddy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caddy")
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl Caddy {
    /// Connects to Caddy's admin API and writes the stored routes into it (Caddy may have
    /// restarted without them).
    pub async fn connect(store: Arc<dyn Store>, settings: ProxySection) -> anyhow::Result<Caddy> {
        let caddy = Caddy {
            admin: settings.caddy_admin.trim_end_matches('/').to_string(),
            settings,
            store,
            // The admin API is local to Caddy: never through an HTTP proxy from the environment.
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(ADMIN_TIMEOUT)
                .build()
                .context("an HTTP client for Caddy's admin API")?,
            changes: Arc::new(tokio::sync::Mutex::new(())),
            draining: Arc::default(),
        };
        caddy
            .write_routes()
            .await
            .with_context(|| format!("writing the routes into Caddy at {}", caddy.admin))?;
        Ok(caddy)
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<String> {
        let response = self
            .client
            .request(method.clone(), format!("{}{path}", self.admin))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default())
            .send()
            .await
            .with_context(|| format!("Caddy's admin API ({ADMIN_TIMEOUT:?} at most)"))?;
        let status = response.status();
        let text = response.text().await.context("Caddy's admin API")?;
        if !status.is_success() {
            bail!("{method} {path}: Caddy answered {status}: {}", text.trim());
        }
        Ok(text)
    }

    /// Caddy's JSON for every stored route: longest path prefix first within a host.
    fn server_config(&self, routes: &[RouteRecord]) -> Value {
        let mut routes: Vec<&RouteRecord> = routes.iter().collect();
        // The same precedence as the built-in proxy.
        fn order(r: &RouteRecord) -> (std::cmp::Reverse<usize>, &str, &str, &str) {
            super::precedence(&r.path_prefix, &r.repo, &r.environment, &r.app)
        }
        routes.sort_by(|a, b| order(a).cmp(&order(b)));
        let policy = match self.settings.balance {
            Balance::RoundRobin => "round_robin",
            Balance::LeastInFlight => "least_conn",
        };
        let mut caddy_routes: Vec<Value> = routes
            .iter()
            .filter(|r| !r.upstreams.is_empty())
            .map(|route| {
                let prefix = route.path_prefix.trim_end_matches('/');
                let paths = if prefix.is_empty() {
                    vec!["/*".to_string()]
                } else {
                    vec![prefix.to_string(), format!("{prefix}/*")]
                };
                json!({
                    "@id": format!("dropship-{}-{}-{}", route.repo.replace('/', "-"), route.environment, route.app),
                    "match": [{"host": route.hosts, "path": paths}],
                    "handle": [{
                        "handler": "reverse_proxy",
                        "upstreams": route.upstreams.iter().map(|u| json!({"dial": u.address})).collect::<Vec<_>>(),
                        "load_balancing": {
                            "selection_policy": {"policy": policy},
                            "try_duration": format!("{}ms", self.settings.connect_timeout.as_millis()),
                        },
                        "health_checks": {"passive": {"fail_duration": format!("{}ms", self.settings.eject_for.as_millis())}},
                    }],
                    "terminal": true,
                })
            })
            .collect();
        let mut draining = self.draining.lock().expect("the draining list").clone();
        if !draining.is_empty() {
            draining.sort();
            draining.dedup();
            caddy_routes.push(json!({
                "@id": DRAINING,
                "match": [{"expression": "false"}],
                "handle": [{
                    "handler": "reverse_proxy",
                    "upstreams": draining.iter().map(|a| json!({"dial": a})).collect::<Vec<_>>(),
                }],
                "terminal": true,
            }));
        }
        let listen: Vec<String> = self.settings.listen.iter().map(|a| a.to_string()).collect();
        json!({
            "listen": listen,
            "routes": caddy_routes,
            "automatic_https": {"disable": true},
        })
    }

    async fn write_routes(&self) -> anyhow::Result<()> {
        let routes = self.store.routes().await?;
        let server = self.server_config(&routes);
        let path = format!("/config/apps/http/servers/{SERVER}");
        if self
            .call(http::Method::POST, &path, Some(server.clone()))
            .await
            .is_err()
        {
            // A Caddy without an http app yet: create it, keeping whatever else it has.
            self.call(
                http::Method::POST,
                "/config/apps/http",
                Some(json!({"servers": {SERVER: server}})),
            )
            .await?;
        }
        Ok(())
    }

    /// Waits until Caddy has no request in flight to any of `addresses`, or `timeout`.
    pub(super) async fn drained(&self, addresses: &[String], timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        // Caddy counts a request on its upstream only once the old configuration's handler
        // has picked it: quiet must be seen twice, a poll apart, before the upstream goes.
        let mut quiet = 0;
        loop {
            let busy = match self
                .call(http::Method::GET, "/reverse_proxy/upstreams", None)
                .await
                .ok()
                .and_then(|t| serde_json::from_str::<Vec<Value>>(&t).ok())
            {
                Some(upstreams) => upstreams.iter().any(|u| {
                    addresses.iter().any(|a| u["address"] == a.as_str())
                        && u["num_requests"].as_u64().unwrap_or(0) > 0
                }),
                // Not known is not quiet.
                None => true,
            };
            quiet = if busy { 0 } else { quiet + 1 };
            if quiet >= 2 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// A drain of `addresses` ended: the next configuration written no longer names them.
    pub(super) fn drain_ended(&self, addresses: &[String]) {
        let mut draining = self.draining.lock().expect("the draining list");
        for address in addresses {
            if let Some(at) = draining.iter().position(|a| a == address) {
                draining.swap_remove(at);
            }
        }
    }
}

#[async_trait]
impl Routes for Caddy {
    async fn change(
        &self,
        key: &RouteKey,
        next: Option<(RouteSpec, Vec<UpstreamSpec>)>,
    ) -> anyhow::Result<Drain> {
        let _serial = self.changes.lock().await;
        let routes = self.store.routes().await?;
        if let Some((spec, _)) = &next {
            super::refuse_taken(
                spec,
                super::host_taken(
                    spec,
                    routes.iter().map(|r| (r.repo.as_str(), r.hosts.as_slice())),
                ),
            )?;
        }
        let old: Vec<String> = routes
            .into_iter()
            .find(|r| r.repo == key.repo && r.environment == key.environment && r.app == key.app)
            .map(|r| r.upstreams.into_iter().map(|u| u.address).collect())
            .unwrap_or_default();
        let staying: Vec<String> = match &next {
            Some((spec, upstreams)) => {
                self.store.save_route(&spec.record(upstreams)).await?;
                upstreams.iter().map(|u| u.address.clone()).collect()
            }
            None => {
                self.store
                    .delete_route(&key.repo, &key.environment, &key.app)
                    .await?;
                Vec::new()
            }
        };
        let replaced: Vec<String> = old.into_iter().filter(|a| !staying.contains(a)).collect();
        self.draining
            .lock()
            .expect("the draining list")
            .extend(replaced.iter().cloned());
        // Dropped on an error too, which takes the addresses out again.
        let drain = Drain::external(self.clone(), replaced);
        self.write_routes().await?;
        Ok(drain)
    }
}
