//! `--explain` for fake news: each word's share in the predicted label, by occlusion.
//!
//! Every word (a run of non-whitespace) is deleted in turn and the text scored again; a word's
//! score is how much the predicted label's probability drops without it (negative when the text is
//! more sure without it). The variants go through the classifier in batches, as a plain run's
//! texts do, so a text of n words costs about n plain runs of it. Texts longer than [`MAX_WORDS`]
//! words are explained for their first [`MAX_WORDS`] words only, which bounds that cost.

use serde::Serialize;
use zoo_runtime::explain::Span;

use crate::Classifier;

/// Words explained per text; later words get no score.
pub const MAX_WORDS: usize = 256;
/// Words marked in piped human output.
pub const MARKED: usize = 5;

/// The attribution of one text, as it goes into the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Attribution {
    pub method: &'static str,
    pub label: String,
    /// In text order, with byte offsets into the text.
    pub words: Vec<Span>,
    /// How many words the text has; more than `words.len()` when it was cut at [`MAX_WORDS`].
    pub total_words: usize,
}

/// Byte ranges of the text's words (runs of non-whitespace).
pub fn words(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, text.len()));
    }
    out
}

/// The text with the given byte ranges (sorted, not overlapping) removed.
pub fn without(text: &str, ranges: &[(usize, usize)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for &(start, end) in ranges {
        out.push_str(&text[at..start]);
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

/// Scores the first [`MAX_WORDS`] words of `text` for label `label`, whose probability for the
/// whole text is `p`.
pub fn attribute(classifier: &Classifier, text: &str, label: usize, p: f32, batch_size: usize) -> Attribution {
    let all = words(text);
    let explained = &all[..all.len().min(MAX_WORDS)];
    let variants: Vec<String> = explained.iter().map(|&w| without(text, &[w])).collect();
    let refs: Vec<&str> = variants.iter().map(String::as_str).collect();
    let results = classifier.classify(&refs, batch_size);
    let words = explained
        .iter()
        .zip(results)
        .map(|(&(start, end), r)| Span {
            text: text[start..end].to_string(),
            start,
            end,
            // A text that is nothing without this word (its only word) cannot be scored again.
            score: r.map(|c| p - c.probabilities[label]).unwrap_or(0.0),
        })
        .collect();
    Attribution {
        method: "occlusion (each word deleted)",
        label: classifier.labels()[label].clone(),
        words,
        total_words: all.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_runs_of_non_whitespace_by_byte_offsets() {
        let text = "  5G  spreads\tcoronavirus — été\n";
        let w = words(text);
        let found: Vec<&str> = w.iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(found, ["5G", "spreads", "coronavirus", "—", "été"]);
        assert_eq!(without(text, &[w[1], w[3]]), "  5G  \tcoronavirus  été\n");
    }
}
