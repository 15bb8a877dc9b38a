//! `--explain`'s word scores must point at the words the decision rests on: deleting a text's
//! top-scored words has to move the predicted label's probability more than deleting as many
//! words picked at random, on average over real dev texts (Constraint val).

use candle_core::Device;
use zoo_fake_news::explain::{attribute, without};
use zoo_fake_news::{table, Classifier};
use zoo_runtime::test_support::{shared_assets, shared_hub_cache};
use zoo_runtime::{Context, HubSettings, Model, ModelRef};

/// Dev texts used: every 20th row of the 2140, so the sample spreads over the file.
const STRIDE: usize = 20;
/// Words deleted per text.
const DELETED: usize = 3;
/// Random draws per text, averaged.
const DRAWS: usize = 8;

/// A small, fixed-seed generator (SplitMix64): the random baseline must be the same every run.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }

    /// `k` distinct indices below `n`, sorted.
    fn pick(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below(n - i);
            all.swap(i, j);
        }
        let mut chosen = all[..k].to_vec();
        chosen.sort_unstable();
        chosen
    }
}

#[test]
fn deleting_the_top_scored_words_moves_the_label_more_than_deleting_random_words() {
    let (Some(assets), Some(cache)) = (shared_assets("word attribution"), shared_hub_cache("word attribution")) else {
        return;
    };
    let mut hub = HubSettings::from_env(true);
    hub.cache_dir = cache;
    let model = Model::resolve(&ModelRef::parse("minilm-fake-news").unwrap(), &hub);
    let ctx = Context { device: Device::Cpu, hub, progress: false, outputs: Default::default() };
    let classifier = Classifier::load(&model, &ctx).unwrap();
    let rows =
        table::read(&assets.join("data/fake-news/constraint_covid19/Constraint_Val.csv"), "tweet", Some("label"))
            .unwrap();

    let mut rng = SplitMix(7);
    let (mut top_drop, mut random_drop, mut texts) = (0f64, 0f64, 0usize);
    for row in rows.iter().step_by(STRIDE) {
        let text = row.text.as_str();
        let probs = classifier.classify(&[text], 32).remove(0).unwrap().probabilities;
        let label = probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        let attribution = attribute(&classifier, text, label, probs[label], 32);
        let spans = &attribution.words;
        // Texts must keep words after the deletion, or there is nothing left to classify.
        if spans.len() <= 2 * DELETED {
            continue;
        }
        assert_eq!(spans.len(), attribution.total_words, "a tweet is explained whole");
        for span in spans {
            assert_eq!(&text[span.start..span.end], span.text, "byte offsets point at the word");
            assert!(span.score.is_finite());
        }

        let mut best: Vec<usize> = (0..spans.len()).collect();
        best.sort_by(|&a, &b| spans[b].score.total_cmp(&spans[a].score));
        let drop = |chosen: &[usize]| {
            let mut chosen = chosen.to_vec();
            chosen.sort_unstable();
            let ranges: Vec<(usize, usize)> = chosen.iter().map(|&i| (spans[i].start, spans[i].end)).collect();
            let cut = without(text, &ranges);
            let p = classifier.classify(&[cut.as_str()], 32).remove(0).unwrap().probabilities;
            (probs[label] - p[label]) as f64
        };
        top_drop += drop(&best[..DELETED]);
        let draws: Vec<Vec<usize>> = (0..DRAWS).map(|_| rng.pick(spans.len(), DELETED)).collect();
        let ranges: Vec<String> = draws
            .iter()
            .map(|d| without(text, &d.iter().map(|&i| (spans[i].start, spans[i].end)).collect::<Vec<_>>()))
            .collect();
        let refs: Vec<&str> = ranges.iter().map(String::as_str).collect();
        let random: f64 = classifier
            .classify(&refs, 32)
            .into_iter()
            .map(|r| (probs[label] - r.unwrap().probabilities[label]) as f64)
            .sum::<f64>()
            / DRAWS as f64;
        random_drop += random;
        texts += 1;
    }
    assert!(texts >= 90, "only {texts} dev texts were long enough");
    let (top, random) = (top_drop / texts as f64, random_drop / texts as f64);
    eprintln!(
        "deleting {DELETED} words from {texts} Constraint val texts: top-scored words move the label's \
         probability by {top:.4} on average, random words by {random:.4}"
    );
    assert!(top > 2.0 * random.max(0.0) && top > 0.01, "top-scored {top:.4} vs random {random:.4}");
}

#[test]
fn a_text_of_one_word_is_explained_without_failing() {
    let Some(cache) = shared_hub_cache("one-word attribution") else { return };
    let mut hub = HubSettings::from_env(true);
    hub.cache_dir = cache;
    let model = Model::resolve(&ModelRef::parse("minilm-fake-news").unwrap(), &hub);
    let ctx = Context { device: Device::Cpu, hub, progress: false, outputs: Default::default() };
    let classifier = Classifier::load(&model, &ctx).unwrap();
    let text = "  vaccines ";
    let probs = classifier.classify(&[text], 1).remove(0).unwrap().probabilities;
    let attribution = attribute(&classifier, text, 0, probs[0], 1);
    assert_eq!(attribution.words.len(), 1);
    assert_eq!(attribution.words[0].text, "vaccines");
    assert_eq!(attribution.words[0].score, 0.0, "a word whose deletion leaves nothing is not scored");
}
