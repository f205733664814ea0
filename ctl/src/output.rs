//! How results reach the operator: aligned tables (rpk style: upper-case
//! headers, two spaces between columns) or JSON with `--json`.
//!
//! Commands hand this module rows and `serde_json::Value`s; it owns the
//! layout and never talks to the broker. Progress and errors go to stderr,
//! results to stdout, so `--json` output stays parseable.

use std::io::Write;

use serde_json::Value;

/// Where a command's results go, and in which form.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `value` as one JSON document (pretty, for reading and for
    /// `json.loads`).
    pub fn json(&self, value: &Value) {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{e}"));
        print_out(&format!("{text}\n"));
    }

    /// Prints `value` as one line (JSON lines, for streams of records).
    pub fn json_line(&self, value: &Value) {
        print_out(&format!("{value}\n"));
    }

    /// Prints a human-readable block.
    pub fn text(&self, text: &str) {
        print_out(text);
    }
}

/// Progress of a long operation, for a human watching: stderr, one line.
pub fn progress(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn print_out(s: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`brokerctl consume | head`) is not an error worth a
    // panic; the command ends when its output is no longer read.
    if out
        .write_all(s.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

/// A table with a header row; columns sized to their widest cell.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut lines = vec![self.headers.clone()];
        lines.extend(self.rows.iter().cloned());
        align(&lines)
    }
}

/// Key/value lines (`NAME  orders`), keys aligned, no header.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let lines: Vec<Vec<String>> = pairs
        .iter()
        .map(|(k, v)| vec![k.to_string(), v.clone()])
        .collect();
    align(&lines)
}

fn align(lines: &[Vec<String>]) -> String {
    let columns = lines.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for line in lines {
        for (i, cell) in line.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in lines {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            if i + 1 == line.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// A table printed row by row as results arrive (produce, consume): fixed
/// column widths, the header before the first row.
pub struct StreamTable {
    columns: Vec<(&'static str, usize)>,
    header_done: bool,
}

impl StreamTable {
    pub fn new(columns: &[(&'static str, usize)]) -> StreamTable {
        StreamTable {
            columns: columns.to_vec(),
            header_done: false,
        }
    }

    pub fn format_row(&mut self, cells: &[String]) -> String {
        let mut out = String::new();
        if !self.header_done {
            self.header_done = true;
            let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
            out.push_str(&self.line(&header));
        }
        out.push_str(&self.line(cells));
        out
    }

    fn line(&self, cells: &[String]) -> String {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let width = self.columns.get(i).map_or(0, |c| c.1);
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        format!("{}\n", text.trim_end())
    }
}

/// A list of node ids as `[0, 1]`.
pub fn id_list(ids: &[i32]) -> String {
    let inner: Vec<String> = ids.iter().map(i32::to_string).collect();
    format!("[{}]", inner.join(", "))
}

/// Bytes as text: UTF-8 shown as is (lossily), `null` for none.
pub fn text_or_null(b: Option<&[u8]>) -> Value {
    b.map_or(Value::Null, |b| {
        Value::String(String::from_utf8_lossy(b).into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["NAME", "PARTITIONS"]);
        t.row(vec!["orders".into(), "3".into()]);
        t.row(vec!["a".into(), "12".into()]);
        assert_eq!(t.render(), "NAME    PARTITIONS\norders  3\na       12\n");
    }

    #[test]
    fn key_values_align_keys() {
        let s = key_values(&[("NAME", "x".into()), ("PARTITIONS", "3".into())]);
        assert_eq!(s, "NAME        x\nPARTITIONS  3\n");
    }

    #[test]
    fn stream_table_prints_header_once() {
        let mut t = StreamTable::new(&[("PARTITION", 9), ("OFFSET", 6)]);
        assert_eq!(
            t.format_row(&["0".into(), "5".into()]),
            "PARTITION  OFFSET\n0          5\n"
        );
        assert_eq!(t.format_row(&["1".into(), "7".into()]), "1          7\n");
    }
}
