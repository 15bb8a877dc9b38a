//! Transcripts as text, subtitles (SRT, WebVTT) and JSON.

use serde_json::{json, Map, Value};

use crate::decode::{Segment, Transcript};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Txt,
    Json,
    Srt,
    Vtt,
}

impl Format {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.to_ascii_lowercase().as_str() {
            "txt" | "text" => Self::Txt,
            "json" => Self::Json,
            "srt" => Self::Srt,
            "vtt" | "webvtt" => Self::Vtt,
            _ => return None,
        })
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Txt => "txt",
            Self::Json => "json",
            Self::Srt => "srt",
            Self::Vtt => "vtt",
        }
    }
}

/// `HH:MM:SS` plus milliseconds after `separator` (`,` for SRT, `.` for WebVTT).
fn timestamp(seconds: f64, separator: char) -> String {
    let millis = (seconds.max(0.0) * 1000.0).round() as u64;
    let (h, m, s, ms) = (millis / 3_600_000, millis / 60_000 % 60, millis / 1000 % 60, millis % 1000);
    format!("{h:02}:{m:02}:{s:02}{separator}{ms:03}")
}

/// The transcript's fields of the JSON object (the caller adds `input` and `model`).
pub fn json_fields(t: &Transcript) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("language".into(), t.language.clone().into());
    map.insert("language_probability".into(), round(t.language_probability, 4).into());
    map.insert("duration".into(), round(t.duration, 3).into());
    map.insert("text".into(), t.text().into());
    let segments: Vec<Value> = t
        .segments
        .iter()
        .map(|s| {
            let mut segment = json!({
                "start": round(s.start, 2),
                "end": round(s.end, 2),
                "text": s.text.trim(),
                "avg_logprob": round(s.avg_logprob, 4),
                "no_speech_prob": round(s.no_speech_prob, 4),
                "temperature": s.temperature,
            });
            if let Some(words) = &s.words {
                segment["words"] = words
                    .iter()
                    .map(|w| {
                        json!({"text": w.text.trim(), "start": round(w.start, 2), "end": round(w.end, 2),
                               "confidence": round(w.confidence, 4)})
                    })
                    .collect();
            }
            segment
        })
        .collect();
    map.insert("segments".into(), segments.into());
    map
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// The whole document in `format`; `head` holds `input` and `model` for JSON.
pub fn render(t: &Transcript, format: Format, head: Map<String, Value>) -> String {
    match format {
        Format::Txt => t.segments.iter().map(|s| format!("{}\n", marked_text(s))).collect(),
        Format::Json => {
            let mut object = head;
            object.extend(json_fields(t));
            format!("{}\n", Value::Object(object))
        }
        Format::Srt => t
            .segments
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!("{}\n{} --> {}\n{}\n\n", i + 1, timestamp(s.start, ','), timestamp(s.end, ','), s.text.trim())
            })
            .collect(),
        Format::Vtt => {
            let cues: String = t
                .segments
                .iter()
                .map(|s| format!("{} --> {}\n{}\n\n", timestamp(s.start, '.'), timestamp(s.end, '.'), timed_text(s)))
                .collect();
            format!("WEBVTT\n\n{cues}")
        }
    }
}

/// Below this confidence a word is marked in text output.
const LOW_CONFIDENCE: f64 = 0.5;

/// The transcript as one line, low-confidence words marked as in [`Format::Txt`] (the CLI's human
/// output).
pub fn marked_transcript(t: &Transcript) -> String {
    if t.segments.iter().all(|s| s.words.is_none()) {
        return t.text();
    }
    t.segments.iter().map(marked_text).collect::<Vec<_>>().join(" ")
}

/// The segment's text, with `(?)` after words heard with low confidence when words were scored.
fn marked_text(s: &Segment) -> String {
    match &s.words {
        Some(words) if !words.is_empty() => words
            .iter()
            .map(|w| if w.confidence < LOW_CONFIDENCE { format!("{}(?)", w.text) } else { w.text.clone() })
            .collect::<String>()
            .trim()
            .to_string(),
        _ => s.text.trim().to_string(),
    }
}

/// WebVTT cue text with each word's start as an inline timestamp, when words were timed.
fn timed_text(s: &Segment) -> String {
    match &s.words {
        Some(words) if !words.is_empty() => words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    w.text.trim().to_string()
                } else {
                    format!(" <{}>{}", timestamp(w.start, '.'), w.text.trim())
                }
            })
            .collect(),
        _ => s.text.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript() -> Transcript {
        let seg = |start, end, text: &str| Segment {
            start,
            end,
            text: text.into(),
            avg_logprob: -0.2,
            no_speech_prob: 0.01,
            temperature: 0.0,
            compression_ratio: 1.2,
            tokens: vec![],
            words: None,
        };
        Transcript {
            language: "en".into(),
            language_probability: 1.0,
            duration: 3723.5,
            segments: vec![seg(0.0, 2.5, " Hello there."), seg(3661.25, 3723.456, " Goodbye.")],
        }
    }

    #[test]
    fn subtitles_follow_their_formats() {
        let t = transcript();
        assert_eq!(
            render(&t, Format::Srt, Map::new()),
            "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n01:01:01,250 --> 01:02:03,456\nGoodbye.\n\n"
        );
        assert_eq!(
            render(&t, Format::Vtt, Map::new()),
            "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n01:01:01.250 --> 01:02:03.456\nGoodbye.\n\n"
        );
        assert_eq!(render(&t, Format::Txt, Map::new()), "Hello there.\nGoodbye.\n");
    }

    #[test]
    fn scored_words_mark_text_and_time_vtt_cues() {
        let mut t = transcript();
        let word = |text: &str, start, end, confidence| crate::words::Word {
            text: text.into(),
            start,
            end,
            confidence,
            tokens: 1,
        };
        t.segments[0].words = Some(vec![word(" Hello", 0.0, 0.5, 0.9), word(" there.", 0.6, 2.5, 0.3)]);
        t.segments[1].words = Some(vec![word(" Goodbye.", 3661.25, 3662.0, 0.5)]);
        assert_eq!(render(&t, Format::Txt, Map::new()), "Hello there.(?)\nGoodbye.\n");
        assert_eq!(marked_transcript(&t), "Hello there.(?) Goodbye.");
        assert_eq!(
            render(&t, Format::Vtt, Map::new()),
            "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello <00:00:00.600>there.\n\n\
             01:01:01.250 --> 01:02:03.456\nGoodbye.\n\n"
        );
        let v: Value = serde_json::from_str(&render(&t, Format::Json, Map::new())).unwrap();
        assert_eq!(
            v["segments"][0]["words"][1],
            json!({"text": "there.", "start": 0.6, "end": 2.5, "confidence": 0.3})
        );
        // Without scored words, the plain text.
        assert_eq!(marked_transcript(&transcript()), "Hello there. Goodbye.");
    }

    #[test]
    fn json_has_the_documented_fields() {
        let mut head = Map::new();
        head.insert("input".into(), "a.wav".into());
        let v: Value = serde_json::from_str(&render(&transcript(), Format::Json, head)).unwrap();
        for key in ["input", "language", "language_probability", "duration", "text", "segments"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["text"], "Hello there. Goodbye.");
        let seg = &v["segments"][1];
        for key in ["start", "end", "text", "avg_logprob", "no_speech_prob", "temperature"] {
            assert!(seg.get(key).is_some(), "{key}");
        }
        assert_eq!(seg["end"], 3723.46);
    }
}
