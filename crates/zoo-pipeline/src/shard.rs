//! One run's part of a job split across machines (`--shard-index I --shard-count N`, or a
//! Kubernetes Indexed Job's `JOB_COMPLETION_INDEX`): every shard expands the same inputs in the
//! same order (folders and patterns expand sorted) and keeps its own contiguous block, so the N
//! runs cover every input exactly once, and their outputs, concatenated in shard order, are one
//! run's.

use zoo_runtime::Input;

/// The variable a Kubernetes Indexed Job sets to each pod's index.
pub const INDEX_VARIABLE: &str = "JOB_COMPLETION_INDEX";

/// Which part of the inputs a run takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// Why a shard could not be chosen (a usage error).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("--shard-index needs --shard-count")]
    IndexWithoutCount,
    #[error("--shard-count needs --shard-index, or {INDEX_VARIABLE} set (as a Kubernetes Indexed Job sets it)")]
    NoIndex,
    #[error("invalid value '{value}' for {what}: a whole number")]
    NotANumber { what: &'static str, value: String },
    #[error("--shard-count must be at least 1")]
    NoShards,
    #[error("shard index {index} is past the last shard of {count} (indices start at 0)")]
    IndexPastCount { index: usize, count: usize },
}

impl Shard {
    /// The shard from the options, the index falling back to `index_from_env` (the value of
    /// [`INDEX_VARIABLE`]); `None` when no sharding was asked for.
    pub fn choose(
        index: Option<&str>,
        count: Option<&str>,
        index_from_env: Option<&str>,
    ) -> Result<Option<Shard>, ShardError> {
        let number = |what: &'static str, value: &str| {
            value.trim().parse::<usize>().map_err(|_| ShardError::NotANumber { what, value: value.to_string() })
        };
        let count = match (index, count) {
            (None, None) => return Ok(None),
            (Some(_), None) => return Err(ShardError::IndexWithoutCount),
            (_, Some(count)) => number("--shard-count", count)?,
        };
        let index = match (index, index_from_env) {
            (Some(index), _) => number("--shard-index", index)?,
            (None, Some(index)) => number(INDEX_VARIABLE, index)?,
            (None, None) => return Err(ShardError::NoIndex),
        };
        if count == 0 {
            return Err(ShardError::NoShards);
        }
        if index >= count {
            return Err(ShardError::IndexPastCount { index, count });
        }
        Ok(Some(Shard { index, count }))
    }

    /// This shard's inputs: the `index`-th of `count` contiguous blocks whose sizes differ by at
    /// most one.
    pub fn select(&self, mut inputs: Vec<Input>) -> Vec<Input> {
        let total = inputs.len();
        let (start, end) = (self.index * total / self.count, (self.index + 1) * total / self.count);
        inputs.truncate(end);
        inputs.drain(..start);
        inputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(inputs: &[Input]) -> Vec<String> {
        inputs.iter().map(|i| i.name.clone()).collect()
    }

    #[test]
    fn shards_cover_every_input_once_in_order() {
        for total in [0usize, 1, 2, 7, 10, 23] {
            let inputs: Vec<Input> = (0..total).map(|i| Input::text(format!("{i:02}"), "x")).collect();
            for count in 1..=12 {
                let mut union = Vec::new();
                for index in 0..count {
                    let part = Shard { index, count }.select(inputs.clone());
                    assert!(part.len() <= total.div_ceil(count) && part.len() >= total / count, "{total}/{count}");
                    union.extend(names(&part));
                }
                assert_eq!(union, names(&inputs), "{total} inputs in {count} shards");
            }
        }
    }

    #[test]
    fn the_index_comes_from_the_option_or_the_job() {
        assert_eq!(Shard::choose(None, None, Some("3")), Ok(None), "the variable alone shards nothing");
        assert_eq!(Shard::choose(Some("1"), Some("4"), Some("3")), Ok(Some(Shard { index: 1, count: 4 })));
        assert_eq!(Shard::choose(None, Some("4"), Some("3")), Ok(Some(Shard { index: 3, count: 4 })));
        assert_eq!(Shard::choose(None, Some("4"), None), Err(ShardError::NoIndex));
        assert_eq!(Shard::choose(Some("1"), None, None), Err(ShardError::IndexWithoutCount));
        assert_eq!(Shard::choose(Some("4"), Some("4"), None), Err(ShardError::IndexPastCount { index: 4, count: 4 }));
        assert_eq!(Shard::choose(Some("0"), Some("0"), None), Err(ShardError::NoShards));
        let bad = Shard::choose(None, Some("2"), Some("x")).unwrap_err().to_string();
        assert_eq!(bad, "invalid value 'x' for JOB_COMPLETION_INDEX: a whole number");
    }
}
