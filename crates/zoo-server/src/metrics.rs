//! `/metrics`: Prometheus (OpenMetrics) text, with a `zoo_` prefix on every name.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    task: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

type HistogramFamily = Family<ModelLabels, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn batch_sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 9))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    queue_depth: Family<ModelLabels, Gauge>,
    ready: Family<ModelLabels, Gauge>,
    abandoned: Family<ModelLabels, Counter>,
    batch_size: HistogramFamily,
    queue_seconds: HistogramFamily,
    inference_seconds: HistogramFamily,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("zoo");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "HTTP requests answered, by route, task and status", requests.clone());
        let queue_depth = Family::<ModelLabels, Gauge>::default();
        registry.register("queue_depth", "Requests waiting for a model", queue_depth.clone());
        let ready = Family::<ModelLabels, Gauge>::default();
        registry.register("model_ready", "1 when a model is loaded and warmed up", ready.clone());
        let abandoned = Family::<ModelLabels, Counter>::default();
        registry.register(
            "abandoned_requests",
            "Queued requests dropped unrun: the client left or its time ran out",
            abandoned.clone(),
        );
        let batch_size = HistogramFamily::new_with_constructor(batch_sizes as fn() -> Histogram);
        registry.register("batch_size", "Inputs per model run (dynamic batching)", batch_size.clone());
        let queue_seconds = HistogramFamily::new_with_constructor(seconds as fn() -> Histogram);
        registry.register("queue_seconds", "Time a request waited for its model", queue_seconds.clone());
        let inference_seconds = HistogramFamily::new_with_constructor(seconds as fn() -> Histogram);
        registry.register("inference_seconds", "Time of one model run (a batch)", inference_seconds.clone());
        Metrics { registry, requests, queue_depth, ready, abandoned, batch_size, queue_seconds, inference_seconds }
    }

    pub fn request(&self, route: &str, task: &str, status: u16) {
        self.requests.get_or_create(&RequestLabels { route: route.into(), task: task.into(), status }).inc();
    }

    pub fn abandoned(&self, model: &str, count: u64) {
        if count > 0 {
            self.abandoned.get_or_create(&ModelLabels { model: model.into() }).inc_by(count);
        }
    }

    pub fn queued_for(&self, model: &str, waited: Duration) {
        self.queue_seconds.get_or_create(&ModelLabels { model: model.into() }).observe(waited.as_secs_f64());
    }

    pub fn ran(&self, model: &str, inputs: usize, took: Duration) {
        let labels = ModelLabels { model: model.into() };
        self.batch_size.get_or_create(&labels).observe(inputs as f64);
        self.inference_seconds.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// The exposition text, with each model's queue depth and readiness as of now.
    pub fn render(&self, models: impl Iterator<Item = (String, usize, bool)>) -> String {
        for (model, depth, ready) in models {
            let labels = ModelLabels { model };
            self.queue_depth.get_or_create(&labels).set(depth as i64);
            self.ready.get_or_create(&labels).set(ready as i64);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}
