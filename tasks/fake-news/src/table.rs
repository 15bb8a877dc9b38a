//! Labelled or unlabelled texts from CSV, TSV or JSON Lines files, by column name.

use std::path::Path;

use zoo_runtime::{Error, Result};

pub struct Row {
    /// 1-based, counting data rows (not the header).
    pub number: usize,
    pub text: String,
    pub label: Option<String>,
}

/// How a delimited file is laid out, where it is not the usual header row and RFC-4180 quotes.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The column names of a file without a header row; `None` reads them from the first row.
    pub columns: Option<Vec<String>>,
    /// Whether `"` quotes fields. LIAR's TSV files hold bare quotes inside statements.
    pub quoting: bool,
}

impl Default for Layout {
    fn default() -> Self {
        Layout { columns: None, quoting: true }
    }
}

/// Reads `path` by its extension: `.csv`, `.tsv`, `.jsonl`/`.ndjson`.
pub fn read(path: &Path, text_column: &str, label_column: Option<&str>) -> Result<Vec<Row>> {
    read_with(path, text_column, label_column, &Layout::default())
}

/// [`read`] for a file laid out as `layout` says (JSON Lines ignores it).
pub fn read_with(path: &Path, text_column: &str, label_column: Option<&str>, layout: &Layout) -> Result<Vec<Row>> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
    match ext.as_str() {
        "csv" => read_delimited(path, b',', text_column, label_column, layout),
        "tsv" | "tab" => read_delimited(path, b'\t', text_column, label_column, layout),
        "jsonl" | "ndjson" => read_jsonl(path, text_column, label_column),
        _ => Err(Error::input(path, "a table must be .csv, .tsv or .jsonl")),
    }
}

fn read_delimited(
    path: &Path,
    delimiter: u8,
    text_column: &str,
    label_column: Option<&str>,
    layout: &Layout,
) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(false)
        .quoting(layout.quoting)
        .has_headers(layout.columns.is_none())
        .from_path(path)
        .map_err(|e| Error::input(path, e))?;
    let headers = match &layout.columns {
        Some(names) => csv::StringRecord::from(names.clone()),
        None => reader.headers().map_err(|e| Error::input(path, e))?.clone(),
    };
    let column = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            Error::input(
                path,
                format!("no column '{name}' (columns: {})", headers.iter().collect::<Vec<_>>().join(", ")),
            )
        })
    };
    let text_at = column(text_column)?;
    let label_at = label_column.map(column).transpose()?;
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| Error::input(path, format!("row {}: {e}", i + 1)))?;
        if record.len() != headers.len() {
            return Err(Error::input(
                path,
                format!("row {}: {} fields where the columns name {}", i + 1, record.len(), headers.len()),
            ));
        }
        rows.push(Row {
            number: i + 1,
            text: record.get(text_at).unwrap_or_default().to_string(),
            label: label_at.map(|at| record.get(at).unwrap_or_default().trim().to_string()),
        });
    }
    Ok(rows)
}

fn read_jsonl(path: &Path, text_column: &str, label_column: Option<&str>) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::input(path, e))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Error::input(path, format!("line {}: {e}", i + 1)))?;
        let field = |name: &str| -> Result<String> {
            match value.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(other) if !other.is_null() => Ok(other.to_string()),
                _ => Err(Error::input(path, format!("line {}: no field '{name}'", i + 1))),
            }
        };
        rows.push(Row {
            number: rows.len() + 1,
            text: field(text_column)?,
            label: label_column.map(field).transpose()?,
        });
    }
    Ok(rows)
}
