//! The edge proxy: users' HTTP traffic, by host and path prefix, to the healthy containers of
//! an app.
//!
//! The engine sees only the [`Routes`] trait: it points a route at new upstreams once they are
//! healthy and gets a [`Drain`] for the old ones, which it waits on before stopping their
//! containers. [`Proxy`] is the built-in implementation (hyper; routes persisted in the store
//! and restored on start).

mod caddy;
mod framing;
mod pool;
mod serve;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use tokio::sync::Notify;

pub use caddy::Caddy;
pub use serve::{serve_on_workers, tls_acceptor};

use crate::config::{Balance, ProxySection};
use crate::store::{RouteRecord, Store};

/// Which app a route leads to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RouteKey {
    pub repo: String,
    pub environment: String,
    pub app: String,
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.repo, self.environment, self.app)
    }
}

/// A route as a deployment asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub key: RouteKey,
    /// Lowercase host names.
    pub hosts: Vec<String>,
    pub path_prefix: String,
}

impl RouteSpec {
    /// The route as the store keeps it, served by `upstreams`.
    pub fn record(&self, upstreams: &[UpstreamSpec]) -> RouteRecord {
        RouteRecord {
            repo: self.key.repo.clone(),
            environment: self.key.environment.clone(),
            app: self.key.app.clone(),
            hosts: self.hosts.clone(),
            path_prefix: self.path_prefix.clone(),
            upstreams: upstreams.to_vec(),
        }
    }
}

/// One upstream: a container's published port on its server. The store's record type, so
/// that the store needs nothing of the proxy.
pub use crate::store::UpstreamRecord as UpstreamSpec;

/// The replaced upstreams of a switch: done when none has a request in flight.
#[derive(Debug, Default)]
pub struct Drain {
    upstreams: Vec<Arc<Upstream>>,
    /// Upstreams of an external proxy, asked about their in-flight requests.
    external: Option<(Caddy, Vec<String>)>,
}

impl Drop for Drain {
    fn drop(&mut self) {
        if let Some((caddy, addresses)) = &self.external {
            caddy.drain_ended(addresses);
        }
    }
}

impl Drain {
    fn external(caddy: Caddy, addresses: Vec<String>) -> Drain {
        Drain {
            upstreams: Vec::new(),
            external: (!addresses.is_empty()).then_some((caddy, addresses)),
        }
    }

    /// Waits until the replaced upstreams have no request in flight, or `timeout`. Returns
    /// whether they drained.
    pub async fn wait(&self, timeout: Duration) -> bool {
        if let Some((caddy, addresses)) = &self.external {
            return caddy.drained(addresses, timeout).await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        for upstream in &self.upstreams {
            loop {
                let idle = upstream.idle.notified();
                if upstream.in_flight.load(Ordering::SeqCst) == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, idle).await.is_err() {
                    return false;
                }
            }
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty() && self.external.is_none()
    }
}

/// Where a deployment's traffic goes, as the engine sees it.
#[async_trait]
pub trait Routes: Send + Sync + std::fmt::Debug {
    /// Sets the route of `key` to `next` (a route and its upstreams), or removes it with
    /// `None`, and returns the upstreams it replaced, to wait on before their containers stop.
    async fn change(
        &self,
        key: &RouteKey,
        next: Option<(RouteSpec, Vec<UpstreamSpec>)>,
    ) -> anyhow::Result<Drain>;

    /// Points `route` at `upstreams` (atomically: every new request from now on goes to them).
    async fn switch(
        &self,
        route: &RouteSpec,
        upstreams: Vec<UpstreamSpec>,
    ) -> anyhow::Result<Drain> {
        self.change(&route.key, Some((route.clone(), upstreams)))
            .await
    }

    /// Removes the route of `key` (its upstreams drain).
    async fn remove(&self, key: &RouteKey) -> anyhow::Result<Drain> {
        self.change(key, None).await
    }
}

/// An upstream in use by the proxy.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) address: String,
    pub(crate) container: String,
    in_flight: AtomicUsize,
    /// Milliseconds since the proxy started before which the upstream gets no requests.
    ejected_until: AtomicU64,
    /// Replaced: no new requests.
    draining: AtomicBool,
    idle: Notify,
    /// Kept-alive connections to it.
    pool: pool::Pool,
}

impl Upstream {
    fn new(spec: &UpstreamSpec) -> Arc<Upstream> {
        Arc::new(Upstream {
            address: spec.address.clone(),
            container: spec.container.clone(),
            in_flight: AtomicUsize::new(0),
            ejected_until: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            idle: Notify::new(),
            pool: pool::Pool::default(),
        })
    }
}

/// Counts a request in flight on an upstream until dropped.
pub(crate) struct InFlight(pub(crate) Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// One app's upstreams behind a route.
#[derive(Debug)]
pub(crate) struct Backend {
    /// Requests answered, by status, under the route's name.
    pub(crate) counters: crate::metrics::RouteCounters,
    pub(crate) path_prefix: String,
    upstreams: Vec<Arc<Upstream>>,
    next: AtomicUsize,
}

impl Backend {
    fn new(
        spec: &RouteSpec,
        upstreams: Vec<Arc<Upstream>>,
        metrics: &crate::metrics::Metrics,
    ) -> Arc<Backend> {
        Arc::new(Backend {
            counters: metrics.proxy_route(spec.key.to_string()),
            path_prefix: spec.path_prefix.clone(),
            upstreams,
            next: AtomicUsize::new(0),
        })
    }
}

/// Every route, by host; swapped whole on each change, so a request sees one consistent table.
#[derive(Debug, Default)]
struct Table {
    /// Per host, backends by path prefix, longest first.
    hosts: HashMap<String, Vec<Arc<Backend>>>,
    /// Every backend by app, for switches.
    backends: HashMap<RouteKey, (RouteSpec, Arc<Backend>)>,
}

/// The built-in proxy's routes and settings.
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

#[derive(Debug)]
struct ProxyInner {
    table: ArcSwap<Table>,
    /// Serializes changes (reads never wait).
    changes: tokio::sync::Mutex<()>,
    store: Arc<dyn Store>,
    pub(crate) settings: ProxySection,
    started: Instant,
    metrics: Arc<crate::metrics::Metrics>,
    /// Requests no route took.
    pub(crate) unrouted: crate::metrics::RouteCounters,
}

impl Proxy {
    /// A proxy with the routes stored in `store`.
    pub async fn load(
        store: Arc<dyn Store>,
        settings: ProxySection,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Proxy> {
        let proxy = Proxy {
            inner: Arc::new(ProxyInner {
                table: ArcSwap::from_pointee(Table::default()),
                changes: tokio::sync::Mutex::new(()),
                store,
                settings,
                started: Instant::now(),
                unrouted: metrics.proxy_route("none"),
                metrics,
            }),
        };
        let mut table = Table::default();
        for record in proxy.inner.store.routes().await? {
            let spec = RouteSpec {
                key: RouteKey {
                    repo: record.repo,
                    environment: record.environment,
                    app: record.app,
                },
                hosts: record.hosts,
                path_prefix: record.path_prefix,
            };
            let upstreams = record.upstreams.iter().map(Upstream::new).collect();
            table.backends.insert(
                spec.key.clone(),
                (
                    spec.clone(),
                    Backend::new(&spec, upstreams, &proxy.inner.metrics),
                ),
            );
        }
        index(&mut table);
        proxy.inner.table.store(Arc::new(table));
        Ok(proxy)
    }

    pub(crate) fn settings(&self) -> &ProxySection {
        &self.inner.settings
    }

    fn now_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    /// The backend for a request to `host` at `path`, if any route matches.
    pub(crate) fn find(&self, host: &str, path: &str) -> Option<Arc<Backend>> {
        let table = self.inner.table.load();
        table
            .hosts
            .get(host)?
            .iter()
            .find(|b| prefix_matches(&b.path_prefix, path))
            .cloned()
    }

    /// An upstream of `backend` for the next request, skipping draining and ejected ones;
    /// `tried` are skipped too (a retry goes elsewhere).
    pub(crate) fn pick(&self, backend: &Backend, tried: &[Arc<Upstream>]) -> Option<InFlight> {
        // Per request, so no allocation: an iterator over the candidates, made twice at most.
        let now = self.now_ms();
        let open = |u: &&Arc<Upstream>| {
            !u.draining.load(Ordering::SeqCst) && !tried.iter().any(|t| t.address == u.address)
        };
        let rested = |u: &&Arc<Upstream>| open(u) && u.ejected_until.load(Ordering::SeqCst) <= now;
        // All ejected: try them anyway rather than fail outright.
        let any_rested = backend.upstreams.iter().any(|u| rested(&u));
        let candidates = || {
            backend
                .upstreams
                .iter()
                .filter(move |u| if any_rested { rested(u) } else { open(u) })
        };
        let chosen = match self.inner.settings.balance {
            Balance::RoundRobin => {
                let count = candidates().count();
                if count == 0 {
                    return None;
                }
                let n = backend.next.fetch_add(1, Ordering::Relaxed);
                // An upstream ejected since the count: take the first still open.
                candidates()
                    .nth(n % count)
                    .or_else(|| candidates().next())?
            }
            Balance::LeastInFlight => {
                candidates().min_by_key(|u| u.in_flight.load(Ordering::SeqCst))?
            }
        };
        // Counted first, then checked: a switch marks its replaced upstreams draining and then
        // waits for their counts to reach zero, so either it sees this request, or this
        // request sees the mark and goes elsewhere (both sides SeqCst).
        chosen.in_flight.fetch_add(1, Ordering::SeqCst);
        let in_flight = InFlight(chosen.clone());
        if chosen.draining.load(Ordering::SeqCst) {
            return None;
        }
        Some(in_flight)
    }

    /// An upstream for a request to `host` at `path` that looked up `backend`: from it, or, when
    /// a switch replaced all of its upstreams since the lookup, from the route as it is now
    /// (`backend` is updated). `None` only when the current route has no upstream to offer: a
    /// switch never fails a request.
    pub(crate) fn pick_current(
        &self,
        backend: &mut Arc<Backend>,
        host: &str,
        path: &str,
        tried: &[Arc<Upstream>],
    ) -> Option<InFlight> {
        loop {
            if let Some(in_flight) = self.pick(backend, tried) {
                return Some(in_flight);
            }
            match self.find(host, path) {
                Some(current) if !Arc::ptr_eq(&current, backend) => *backend = current,
                _ => return None,
            }
        }
    }

    /// Passive health: an upstream that refused a connection rests for `eject_for`.
    pub(crate) fn eject(&self, upstream: &Upstream) {
        let until = self.now_ms() + self.inner.settings.eject_for.as_millis() as u64;
        upstream.ejected_until.store(until, Ordering::SeqCst);
    }

    /// Every route, for pages and tests.
    pub fn routes(&self) -> Vec<(RouteSpec, Vec<String>)> {
        self.inner
            .table
            .load()
            .backends
            .values()
            .map(|(spec, backend)| {
                (
                    spec.clone(),
                    backend
                        .upstreams
                        .iter()
                        .map(|u| u.address.clone())
                        .collect(),
                )
            })
            .collect()
    }
}

/// A host of `spec` that another repository's route already serves, and that repository: a
/// host belongs to one repository, so that none can take over another's traffic.
pub(crate) fn host_taken<'a>(
    spec: &RouteSpec,
    routes: impl IntoIterator<Item = (&'a str, &'a [String])>,
) -> Option<(String, String)> {
    routes.into_iter().find_map(|(repo, hosts)| {
        (repo != spec.key.repo)
            .then(|| hosts.iter().find(|h| spec.hosts.contains(h)))
            .flatten()
            .map(|host| (host.clone(), repo.to_string()))
    })
}

fn refuse_taken(spec: &RouteSpec, taken: Option<(String, String)>) -> anyhow::Result<()> {
    match taken {
        Some((host, repo)) => anyhow::bail!(
            "host `{host}` is routed for {repo}; a host belongs to one repository, so {} cannot route it",
            spec.key.repo
        ),
        None => Ok(()),
    }
}

/// Rebuilds the host index from the backends: per host, in [`precedence`] order.
fn index(table: &mut Table) {
    let mut hosts: HashMap<&str, Vec<(&RouteSpec, &Arc<Backend>)>> = HashMap::new();
    for (spec, backend) in table.backends.values() {
        for host in &spec.hosts {
            hosts.entry(host).or_default().push((spec, backend));
        }
    }
    table.hosts = hosts
        .into_iter()
        .map(|(host, mut routes)| {
            fn order(spec: &RouteSpec) -> (std::cmp::Reverse<usize>, &str, &str, &str) {
                let key = &spec.key;
                precedence(&spec.path_prefix, &key.repo, &key.environment, &key.app)
            }
            routes.sort_by(|(a, _), (b, _)| order(a).cmp(&order(b)));
            let backends = routes.into_iter().map(|(_, b)| b.clone()).collect();
            (host.to_string(), backends)
        })
        .collect();
}

/// The order in which a host's routes are tried: the longer path prefix first (a trailing `/`
/// not counted), then by repository, environment and app. The built-in proxy and Caddy both
/// sort by it, so which route wins depends neither on the backend nor on the order of changes.
pub(crate) fn precedence<'a>(
    path_prefix: &str,
    repo: &'a str,
    environment: &'a str,
    app: &'a str,
) -> (std::cmp::Reverse<usize>, &'a str, &'a str, &'a str) {
    let length = path_prefix.trim_end_matches('/').len();
    (std::cmp::Reverse(length), repo, environment, app)
}

/// `/api` matches `/api`, `/api/x` and `/api?q`, not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

#[async_trait]
impl Routes for Proxy {
    async fn change(
        &self,
        key: &RouteKey,
        next: Option<(RouteSpec, Vec<UpstreamSpec>)>,
    ) -> anyhow::Result<Drain> {
        let _serial = self.inner.changes.lock().await;
        let current = self.inner.table.load_full();
        if let Some((spec, _)) = &next {
            refuse_taken(
                spec,
                host_taken(
                    spec,
                    current
                        .backends
                        .values()
                        .map(|(s, _)| (s.key.repo.as_str(), s.hosts.as_slice())),
                ),
            )?;
        }
        let mut backends = current.backends.clone();
        let old = backends.remove(key);
        // The new route's upstreams; every old one not among them drains.
        let mut staying: Vec<Arc<Upstream>> = Vec::new();
        match &next {
            Some((spec, upstreams)) => {
                self.inner.store.save_route(&spec.record(upstreams)).await?;
                // An upstream that stays (same address) keeps its counters.
                let kept = |spec: &UpstreamSpec| {
                    old.as_ref().and_then(|(_, b)| {
                        b.upstreams
                            .iter()
                            .find(|u| u.address == spec.address && u.container == spec.container)
                            .cloned()
                    })
                };
                staying = upstreams
                    .iter()
                    .map(|u| kept(u).unwrap_or_else(|| Upstream::new(u)))
                    .collect();
                backends.insert(
                    key.clone(),
                    (
                        spec.clone(),
                        Backend::new(spec, staying.clone(), &self.inner.metrics),
                    ),
                );
            }
            None => {
                self.inner
                    .store
                    .delete_route(&key.repo, &key.environment, &key.app)
                    .await?
            }
        }
        let mut table = Table {
            hosts: HashMap::new(),
            backends,
        };
        index(&mut table);
        let replaced: Vec<Arc<Upstream>> = old
            .map(|(_, b)| {
                b.upstreams
                    .iter()
                    .filter(|u| !staying.iter().any(|s| Arc::ptr_eq(s, u)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        // The new table first: a request that then finds its upstream draining looks the route
        // up again and gets the new one.
        self.inner.table.store(Arc::new(table));
        for upstream in &replaced {
            upstream.draining.store(true, Ordering::SeqCst);
        }
        Ok(Drain {
            upstreams: replaced,
            external: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(repo: &str, app: &str, hosts: &[&str]) -> RouteSpec {
        RouteSpec {
            key: RouteKey {
                repo: repo.into(),
                environment: "production".into(),
                app: app.into(),
            },
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: "/".into(),
        }
    }

    #[test]
    fn a_host_belongs_to_one_repository() {
        let mine = spec("acme/shop", "web", &["shop.example.com"]);
        let theirs = spec(
            "evil/app",
            "web",
            &["other.example.com", "shop.example.com"],
        );
        let routes = [(mine.key.repo.as_str(), mine.hosts.as_slice())];
        assert_eq!(
            host_taken(&theirs, routes),
            Some(("shop.example.com".into(), "acme/shop".into()))
        );
        // The same repository may move its own host between apps and environments.
        let again = spec("acme/shop", "api", &["shop.example.com"]);
        assert_eq!(host_taken(&again, routes), None);
    }

    #[tokio::test]
    async fn a_request_that_looked_up_the_route_before_a_switch_gets_the_new_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            crate::store::Sqlite::open(&dir.path().join("dropship.db"))
                .await
                .unwrap(),
        );
        let proxy = Proxy::load(store, ProxySection::default(), Default::default())
            .await
            .unwrap();
        let route = spec("acme/shop", "web", &["shop.test"]);
        let to = |address: &str| {
            vec![UpstreamSpec {
                address: address.into(),
                container: address.into(),
            }]
        };
        proxy.switch(&route, to("10.0.0.1:80")).await.unwrap();
        // The lookup happens, then the switch, then the pick.
        let mut backend = proxy.find("shop.test", "/").unwrap();
        let drain = proxy.switch(&route, to("10.0.0.2:80")).await.unwrap();
        assert!(
            proxy.pick(&backend, &[]).is_none(),
            "the old upstream drains"
        );
        let in_flight = proxy
            .pick_current(&mut backend, "shop.test", "/", &[])
            .expect("the new upstream");
        assert_eq!(in_flight.0.address, "10.0.0.2:80");
        // Nothing was counted on the old upstream: its drain is over.
        assert!(drain.wait(Duration::from_millis(1)).await);
        drop(in_flight);
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api/", "/api/users"));
        assert!(prefix_matches("/api", "/api?x=1"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(!prefix_matches("/api", "/"));
    }
}
