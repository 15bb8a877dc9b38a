//! `make bench` for fake-news: texts/s and tokens/s of the whole classification (tokenise,
//! encode, pool, head) on the first Constraint val tweets at batch 1 and 32, sorted by length
//! as the peers sort them (`ZOO_BENCH_BATCHES=1,8` for others), and peak memory; then what
//! --explain costs on a sample; JSON lines
//! shaped like ../shared/bench's.

use std::time::Instant;

use candle_core::Device;
use serde_json::json;
use zoo_runtime::test_support::{peak_rss_mb, process_cpu_s, shared_assets, shared_hub_cache};
use zoo_runtime::{Context, HubSettings, Model, ModelRef};

fn main() {
    let (Some(assets), Some(cache)) = (shared_assets("fake-news bench"), shared_hub_cache("fake-news bench")) else {
        return;
    };
    let n: usize = std::env::var("ZOO_BENCH_TEXTS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let mut hub = HubSettings::from_env(true);
    hub.cache_dir = cache;
    let ctx = Context { device: Device::Cpu, hub: hub.clone(), progress: false, outputs: Default::default() };
    let model = Model::resolve(&ModelRef::parse("minilm-fake-news").unwrap(), &hub);
    let classifier = zoo_fake_news::Classifier::load(&model, &ctx).unwrap();
    let path = assets.join("data/fake-news/constraint_covid19/Constraint_Val.csv");
    let rows = zoo_fake_news::table::read(&path, "tweet", None).unwrap();
    let mut texts: Vec<&str> = rows.iter().take(n).map(|r| r.text.as_str()).collect();
    texts.sort_by_key(|t| t.len());
    let tokens: usize = texts.iter().map(|t| classifier.tokenize_plain(t).len()).sum();
    classifier.classify(&texts[..8.min(texts.len())], 8);
    let batches: Vec<usize> = std::env::var("ZOO_BENCH_BATCHES")
        .ok()
        .map(|v| v.split(',').filter_map(|b| b.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 32]);
    for batch in batches {
        let (start, cpu) = (Instant::now(), process_cpu_s());
        for chunk in texts.chunks(batch) {
            classifier.classify(chunk, batch);
        }
        let (secs, cpu_s) = (start.elapsed().as_secs_f64(), process_cpu_s() - cpu);
        println!(
            "{}",
            json!({"task": "text", "peer": "zoo (candle + CPU BERT)", "model": "all-MiniLM-L6-v2 + head", "input": format!("{} Constraint_Val tweets", texts.len()),
                   "batch": batch, "threads": candle_core::utils::get_num_threads(), "wall_s": secs, "items_per_s": texts.len() as f64 / secs,
                   "tokens_per_s": tokens as f64 / secs, "own_cpu_s": cpu_s, "items_per_cpu_s": texts.len() as f64 / cpu_s,
                   "peak_rss_mb": peak_rss_mb()})
        );
    }

    // What --explain costs: each text's words deleted in turn and the variants classified, on a
    // sample of the texts (every 10th), against the plain run of the same texts.
    let sample: Vec<&str> = texts.iter().step_by(10).copied().collect();
    let start = Instant::now();
    let plain = classifier.classify(&sample, 32);
    let plain_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for (text, result) in sample.iter().zip(plain) {
        let p = result.unwrap().probabilities;
        let label = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        zoo_fake_news::explain::attribute(&classifier, text, label, p[label], 32);
    }
    let explain_s = start.elapsed().as_secs_f64() + plain_s;
    println!(
        "{}",
        json!({"task": "text", "peer": "zoo (candle + CPU BERT)", "model": "all-MiniLM-L6-v2 + head",
               "input": format!("{} Constraint_Val tweets, --explain (occlusion by word)", sample.len()), "batch": 32,
               "threads": candle_core::utils::get_num_threads(), "wall_s": explain_s, "items_per_s": sample.len() as f64 / explain_s,
               "explain_cost_x": explain_s / plain_s, "peak_rss_mb": peak_rss_mb()})
    );
}
