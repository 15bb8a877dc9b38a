//! `--style` values for a network with built-in styles: `7`, a name (`mosaic`), or a mix
//! (`3:0.7,19:0.3`, weights relative, normalised to sum 1).

use zoo_runtime::{Error, Result};

/// A parsed style mix: (style index, weight) pairs, weights positive and summing to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct StyleMix {
    pub parts: Vec<(usize, f32)>,
}

impl StyleMix {
    pub fn single(index: usize) -> Self {
        StyleMix { parts: vec![(index, 1.0)] }
    }

    /// The weight of every style, for the network's norm tables.
    pub fn weights(&self, styles: usize) -> Vec<f32> {
        let mut weights = vec![0f32; styles];
        for &(index, weight) in &self.parts {
            weights[index] += weight;
        }
        weights
    }

    /// Parses `text` against the style names (their count is the number of styles).
    pub fn parse(text: &str, names: &[String]) -> Result<Self> {
        let bad = |reason: String| Error::InvalidOption { option: "style".into(), value: text.into(), reason };
        let count = names.len();
        let mut parts: Vec<(usize, f32)> = Vec::new();
        let items: Vec<&str> = text.split(',').map(str::trim).collect();
        for item in &items {
            let (key, weight) = match item.split_once(':') {
                Some((key, weight)) => {
                    let weight: f32 = weight.trim().parse().map_err(|_| {
                        bad(format!(
                            "'{}' is not a number (write a mix as INDEX:WEIGHT,..., e.g. 3:0.7,19:0.3)",
                            weight.trim()
                        ))
                    })?;
                    (key.trim(), weight)
                }
                None if items.len() == 1 => (*item, 1.0),
                None => {
                    return Err(bad(format!(
                        "'{item}' has no weight (write a mix as INDEX:WEIGHT,..., e.g. 3:0.7,19:0.3)"
                    )))
                }
            };
            if !weight.is_finite() || weight < 0.0 {
                return Err(bad(format!("the weight of '{key}' must be a number of 0 or more")));
            }
            let index = match key.parse::<usize>() {
                Ok(index) if index < count => index,
                Ok(index) => {
                    return Err(bad(format!("there are {count} styles, numbered 0 to {} (got {index})", count - 1)))
                }
                Err(_) => names.iter().position(|n| n.eq_ignore_ascii_case(key)).ok_or_else(|| {
                    bad(format!(
                        "no style named '{key}'; styles are numbered 0 to {} or named: {}",
                        count - 1,
                        names.join(", ")
                    ))
                })?,
            };
            if parts.iter().any(|(i, _)| *i == index) {
                return Err(bad(format!("style {index} is named twice")));
            }
            parts.push((index, weight));
        }
        let total: f32 = parts.iter().map(|(_, w)| w).sum();
        if total <= 0.0 {
            return Err(bad("the weights add up to 0; give at least one style a positive weight".into()));
        }
        for part in &mut parts {
            part.1 /= total;
        }
        parts.retain(|(_, w)| *w > 0.0);
        Ok(StyleMix { parts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        (0..26).map(|i| format!("s{i}")).collect()
    }

    #[test]
    fn parses_indices_names_and_mixes() {
        assert_eq!(StyleMix::parse("7", &names()).unwrap(), StyleMix::single(7));
        assert_eq!(StyleMix::parse("S3", &names()).unwrap(), StyleMix::single(3));
        let mix = StyleMix::parse("3:0.7, 19:0.3", &names()).unwrap();
        assert_eq!(mix.parts.len(), 2);
        assert!((mix.parts[0].1 - 0.7).abs() < 1e-6 && (mix.parts[1].1 - 0.3).abs() < 1e-6);
        // Relative weights are normalised.
        let mix = StyleMix::parse("1:2,2:6", &names()).unwrap();
        assert_eq!(mix.parts, vec![(1, 0.25), (2, 0.75)]);
        let w = mix.weights(26);
        assert_eq!((w[1], w[2], w.iter().sum::<f32>()), (0.25, 0.75, 1.0));
    }

    #[test]
    fn rejects_bad_values_as_usage_errors() {
        for bad in ["26", "27", "-1", "3:abc", "3:0,4:0", "3:-1,4:2", "3,4", "3:0.5,3:0.5", "nope", "", "3:nan"] {
            let err = StyleMix::parse(bad, &names()).unwrap_err();
            assert!(err.is_usage(), "{bad}: {err}");
            assert!(err.to_string().contains("--style"), "{bad}: {err}");
        }
    }
}
