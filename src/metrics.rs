//! What `/metrics` serves, in Prometheus' text format: one registry per process, counted where
//! things happen (webhook intake, the engine, SSH, the status outbox, the proxy).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric Dropship exports. Cheap to update from any task: counters are atomics.
pub struct Metrics {
    registry: Registry,
    webhooks: Family<Labels, Counter>,
    deployments: Family<Labels, Counter>,
    deployment_seconds: Family<Labels, Histogram>,
    steps: Family<Labels, Counter>,
    ssh_open: Gauge<i64, std::sync::atomic::AtomicI64>,
    ssh_opened: Counter,
    ssh_reconnects: Counter,
    status_posts: Family<Labels, Counter>,
    status_retries: Counter,
    status_delivery_paused: Gauge<i64, std::sync::atomic::AtomicI64>,
    proxy_requests: Family<Labels, Counter<u64, AtomicU64>>,
    live_streams: Gauge<i64, std::sync::atomic::AtomicI64>,
    http_connections: Gauge<i64, std::sync::atomic::AtomicI64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn deployment_histogram() -> Histogram {
    // 0.5 s to about 68 min.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.5, 2.0, 14,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dropship");
        let webhooks = Family::<Labels, Counter>::default();
        registry.register(
            "webhooks",
            "Webhook deliveries by event and result",
            webhooks.clone(),
        );
        let deployments = Family::<Labels, Counter>::default();
        registry.register(
            "deployments",
            "Deployments that ended, by state",
            deployments.clone(),
        );
        let deployment_seconds =
            Family::<Labels, Histogram>::new_with_constructor(deployment_histogram as fn() -> _);
        let deployment_seconds: Family<Labels, Histogram> = deployment_seconds;
        registry.register(
            "deployment_duration_seconds",
            "How long deployments ran, from start to end, by state",
            deployment_seconds.clone(),
        );
        let steps = Family::<Labels, Counter>::default();
        registry.register(
            "steps",
            "Step runs (one step on one server) that ended, by result",
            steps.clone(),
        );
        let ssh_open = Gauge::default();
        registry.register(
            "ssh_connections_open",
            "SSH master connections open now",
            ssh_open.clone(),
        );
        let ssh_opened = Counter::default();
        registry.register(
            "ssh_connections_opened",
            "SSH master connections opened",
            ssh_opened.clone(),
        );
        let ssh_reconnects = Counter::default();
        registry.register(
            "ssh_reconnects",
            "SSH master connections found dropped and opened again",
            ssh_reconnects.clone(),
        );
        let status_posts = Family::<Labels, Counter>::default();
        registry.register(
            "github_status_posts",
            "Deployment status and check-run posts to GitHub, by kind and result",
            status_posts.clone(),
        );
        let status_retries = Counter::default();
        registry.register(
            "github_status_retries",
            "Status posts that failed and were scheduled again",
            status_retries.clone(),
        );
        let status_delivery_paused = Gauge::default();
        registry.register(
            "github_status_delivery_paused",
            "1 while status delivery is paused because GitHub refused Dropship's credentials",
            status_delivery_paused.clone(),
        );
        let proxy_requests = Family::<Labels, Counter>::default();
        registry.register(
            "proxy_requests",
            "Requests the proxy answered, by route and status code",
            proxy_requests.clone(),
        );
        let live_streams = Gauge::default();
        registry.register(
            "live_streams_open",
            "Live log and event streams (server-sent events, followed logs) being fed now",
            live_streams.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections_open",
            "Connections to the main HTTP listener open now",
            http_connections.clone(),
        );
        Metrics {
            registry,
            webhooks,
            deployments,
            deployment_seconds,
            steps,
            ssh_open,
            ssh_opened,
            ssh_reconnects,
            status_posts,
            status_retries,
            status_delivery_paused,
            proxy_requests,
            live_streams,
            http_connections,
        }
    }
}

impl Metrics {
    /// The whole registry in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    pub fn webhook(&self, event: &str, result: &str) {
        self.webhooks
            .get_or_create(&vec![
                ("event", event.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    pub fn deployment_ended(&self, state: &str, seconds: Option<f64>) {
        let labels = vec![("state", state.to_string())];
        self.deployments.get_or_create(&labels).inc();
        if let Some(seconds) = seconds {
            self.deployment_seconds
                .get_or_create(&labels)
                .observe(seconds);
        }
    }

    pub fn step_ended(&self, result: &str) {
        self.steps
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    pub fn ssh_opened(&self, reconnect: bool) {
        self.ssh_open.inc();
        self.ssh_opened.inc();
        if reconnect {
            self.ssh_reconnects.inc();
        }
    }

    pub fn ssh_closed(&self) {
        self.ssh_open.dec();
    }

    /// Whether status delivery is paused (GitHub refused the credentials).
    pub fn status_delivery_paused(&self, paused: bool) {
        self.status_delivery_paused.set(i64::from(paused));
    }

    /// `kind` is `status` or `check`; `result` is `delivered`, `retry`, `paused` or `failed`.
    pub fn status_post(&self, kind: &str, result: &str) {
        self.status_posts
            .get_or_create(&vec![
                ("kind", kind.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
        if result == "retry" {
            self.status_retries.inc();
        }
    }

    /// Counts a live stream as open until the returned guard drops.
    pub fn live_stream(&self) -> OpenGuard {
        OpenGuard::new(self.live_streams.clone())
    }

    /// Counts a main-listener connection as open until the returned guard drops.
    pub fn http_connection(&self) -> OpenGuard {
        OpenGuard::new(self.http_connections.clone())
    }

    /// The request counters of proxy route `route` (`none` for requests no route took).
    pub fn proxy_route(&self, route: impl Into<String>) -> RouteCounters {
        RouteCounters {
            route: route.into(),
            family: self.proxy_requests.clone(),
            by_status: Default::default(),
        }
    }
}

/// One open thing counted in a gauge, until dropped.
#[derive(Debug)]
pub struct OpenGuard(Gauge<i64, std::sync::atomic::AtomicI64>);

impl OpenGuard {
    fn new(gauge: Gauge<i64, std::sync::atomic::AtomicI64>) -> OpenGuard {
        gauge.inc();
        OpenGuard(gauge)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One proxy route's request counters, each status's looked up in the registry once, so the
/// proxy counts a request without allocating.
pub struct RouteCounters {
    route: String,
    family: Family<Labels, Counter<u64, AtomicU64>>,
    by_status: std::sync::RwLock<std::collections::HashMap<u16, Counter>>,
}

impl std::fmt::Debug for RouteCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteCounters")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl RouteCounters {
    /// Counts one answer with `status`.
    pub fn count(&self, status: u16) {
        let cached = self
            .by_status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&status)
            .cloned();
        let counter = cached.unwrap_or_else(|| {
            let labels = vec![
                ("route", self.route.clone()),
                ("status", status.to_string()),
            ];
            let counter = self.family.get_or_create(&labels).clone();
            self.by_status
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(status, counter.clone());
            counter
        });
        counter.inc();
    }
}
