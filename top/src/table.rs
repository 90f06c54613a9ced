//! A view's rows as a table: headers, cells, moods; sorted by a column and filtered by text.

use std::cmp::Ordering;

use crate::rows::{Cell, Mood, Row};

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub headers: &'static [&'static str],
    pub rows: Vec<(Vec<Cell>, Mood)>,
}

/// Which column orders the rows, and which way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SortBy {
    pub column: usize,
    pub descending: bool,
}

impl Table {
    /// The rows whose filter key contains `filter` (case-insensitive; empty keeps all).
    pub fn of<R: Row>(rows: &[R], filter: &str) -> Table {
        let needle = filter.to_lowercase();
        Table {
            headers: R::HEADERS,
            rows: rows
                .iter()
                .filter(|r| needle.is_empty() || r.key().to_lowercase().contains(&needle))
                .map(|r| (r.cells(), r.mood()))
                .collect(),
        }
    }

    /// Numbers compare as numbers (a missing figure sorts lowest), text as text; ties keep the
    /// broker's order.
    pub fn sort(&mut self, by: SortBy) {
        let col = by.column.min(self.headers.len().saturating_sub(1));
        self.rows.sort_by(|(a, _), (b, _)| {
            let o = compare(a.get(col), b.get(col));
            if by.descending { o.reverse() } else { o }
        });
    }
}

fn compare(a: Option<&Cell>, b: Option<&Cell>) -> Ordering {
    match (a, b) {
        (Some(Cell::Num(x, _)), Some(Cell::Num(y, _))) => {
            let (x, y) = (
                x.unwrap_or(f64::NEG_INFINITY),
                y.unwrap_or(f64::NEG_INFINITY),
            );
            x.total_cmp(&y)
        }
        (Some(a), Some(b)) => a.text().cmp(b.text()),
        _ => Ordering::Equal,
    }
}

/// One CSV field, quoted when it must be (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R(&'static str, Option<f64>);
    impl Row for R {
        const HEADERS: &'static [&'static str] = &["NAME", "V"];
        fn cells(&self) -> Vec<Cell> {
            vec![
                Cell::Text(self.0.into()),
                Cell::Num(self.1, format!("{:?}", self.1)),
            ]
        }
        fn mood(&self) -> Mood {
            Mood::Normal
        }
        fn key(&self) -> String {
            self.0.into()
        }
    }

    fn names(t: &Table) -> Vec<&str> {
        t.rows.iter().map(|(c, _)| c[0].text()).collect()
    }

    #[test]
    fn numbers_sort_as_numbers_and_missing_ones_lowest() {
        let rows = [R("a", Some(9.0)), R("b", Some(10.0)), R("c", None)];
        let mut t = Table::of(&rows, "");
        t.sort(SortBy {
            column: 1,
            descending: true,
        });
        assert_eq!(
            names(&t),
            ["b", "a", "c"],
            "10 > 9 (not as text), none last"
        );
        t.sort(SortBy {
            column: 0,
            descending: false,
        });
        assert_eq!(names(&t), ["a", "b", "c"]);
    }

    #[test]
    fn the_filter_keeps_rows_whose_key_holds_it() {
        let rows = [R("vm-Alpha", None), R("vm-beta", None)];
        assert_eq!(names(&Table::of(&rows, "alpha")), ["vm-Alpha"]);
        assert_eq!(Table::of(&rows, "").rows.len(), 2);
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("abc"), "abc");
        assert_eq!(csv_field("1.2s failed: a, b"), "\"1.2s failed: a, b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
    }
}
