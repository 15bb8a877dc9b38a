//! The catalogue as `zoo list` shows it, for every door.

use serde_json::{json, Value};
use zoo_runtime::{CatalogEntry, HubSettings, Model, ModelRef, Task};

/// Where a catalogue model's files are: "bundled" in the binary, "cached", or "not downloaded".
pub fn availability(entry: &'static CatalogEntry, hub: &HubSettings) -> &'static str {
    let model = Model::resolve(&ModelRef::Catalog(entry), hub);
    if entry.is_wholly_bundled() {
        "bundled"
    } else if model.is_available_offline() {
        "cached"
    } else {
        "not downloaded"
    }
}

/// One model as `zoo list --json` prints it.
pub fn model_json(task: &dyn Task, entry: &'static CatalogEntry, hub: &HubSettings) -> Value {
    json!({
        "task": task.name(), "model": entry.id, "default": entry.default, "architecture": entry.architecture,
        "source": entry.source_text(), "licence": entry.licence, "available": availability(entry, hub),
        "summary": entry.summary, "quality": entry.quality,
    })
}
