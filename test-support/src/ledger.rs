//! What a writer attempted and what was acknowledged, and the check a
//! fresh controller runs against a collection's contents.
//!
//! Every append the reliability writers make is a *group*: `parts` rows
//! `(run, seq, part, parts)` for `part` in `0..parts`, each with diff `+1`,
//! at one time. That makes the contents self-describing: a group whose
//! rows are all there exactly once was applied once; a row with diff 2 is a
//! duplicate; a group with some parts missing was half applied.
//!
//! The crash-loop writer prints one line per attempt before it submits it
//! and one per acknowledgement after the controller resolved it:
//!
//! ```text
//! attempt collection=1 run=3 seq=17 rows=4 lower=40 upper=41
//! ack collection=1 run=3 seq=17 rows=4 lower=40 upper=41
//! ```
//!
//! A line cut short by a kill (no trailing newline) is ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use tidemark_storage_types::{Datum, Diff, RelationDesc, Row, ScalarType, Update};

/// One append of a group: where it went and what it held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Append {
    /// The collection (`GlobalId::User(collection)`).
    pub collection: u64,
    /// The writer run that made it.
    pub run: i64,
    /// Its number within the run.
    pub seq: i64,
    /// How many rows it holds.
    pub parts: i64,
    /// The time of its rows (the collection's upper before it).
    pub lower: u64,
    /// The new upper it set.
    pub upper: u64,
}

impl Append {
    /// The group's updates.
    #[must_use]
    pub fn updates(&self) -> Vec<Update<u64>> {
        (0..self.parts)
            .map(|part| {
                Update::new(
                    group_row(self.run, self.seq, part, self.parts),
                    self.lower,
                    1,
                )
            })
            .collect()
    }

    /// The group key.
    #[must_use]
    pub fn key(&self) -> (u64, i64, i64) {
        (self.collection, self.run, self.seq)
    }

    /// Parses the part of a ledger line after its first word.
    fn parse_fields(fields: &str) -> Option<Append> {
        let mut values = BTreeMap::new();
        for field in fields.split_whitespace() {
            let (name, value) = field.split_once('=')?;
            values.insert(name, value);
        }
        Some(Append {
            collection: values.get("collection")?.parse().ok()?,
            run: values.get("run")?.parse().ok()?,
            seq: values.get("seq")?.parse().ok()?,
            parts: values.get("rows")?.parse().ok()?,
            lower: values.get("lower")?.parse().ok()?,
            upper: values.get("upper")?.parse().ok()?,
        })
    }
}

impl fmt::Display for Append {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "collection={} run={} seq={} rows={} lower={} upper={}",
            self.collection, self.run, self.seq, self.parts, self.lower, self.upper
        )
    }
}

/// The relation of every reliability test table.
#[must_use]
pub fn group_relation() -> RelationDesc {
    RelationDesc::empty()
        .with_column("run", ScalarType::Int64.nullable(false))
        .with_column("seq", ScalarType::Int64.nullable(false))
        .with_column("part", ScalarType::Int64.nullable(false))
        .with_column("parts", ScalarType::Int64.nullable(false))
}

/// Row `part` of group `(run, seq)` of `parts` rows.
#[must_use]
pub fn group_row(run: i64, seq: i64, part: i64, parts: i64) -> Row {
    Row::pack([
        Datum::Int64(run),
        Datum::Int64(seq),
        Datum::Int64(part),
        Datum::Int64(parts),
    ])
}

/// What a writer printed: its attempts and acknowledgements.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Every append submitted.
    pub attempted: BTreeSet<Append>,
    /// Every append the controller acknowledged as durable.
    pub acknowledged: BTreeSet<Append>,
}

impl Ledger {
    /// Adds the complete lines of a writer's output (a last line without a
    /// newline, cut by a kill, is ignored; so are lines of other kinds).
    pub fn read_output(&mut self, output: &str) {
        let complete = match output.rfind('\n') {
            Some(end) => &output[..=end],
            None => "",
        };
        for line in complete.lines() {
            if let Some(fields) = line.strip_prefix("attempt ")
                && let Some(append) = Append::parse_fields(fields)
            {
                self.attempted.insert(append);
            } else if let Some(fields) = line.strip_prefix("ack ")
                && let Some(append) = Append::parse_fields(fields)
            {
                self.acknowledged.insert(append);
            }
        }
    }

    /// The line an attempt is printed as.
    #[must_use]
    pub fn attempt_line(append: &Append) -> String {
        format!("attempt {append}")
    }

    /// The line an acknowledgement is printed as.
    #[must_use]
    pub fn ack_line(append: &Append) -> String {
        format!("ack {append}")
    }
}

/// What [`verify`] found in one collection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Acknowledged appends found, whole and once.
    pub acknowledged_present: usize,
    /// Appends attempted but never acknowledged that are present, whole and
    /// once (their acknowledgement was lost with the writer).
    pub unacknowledged_present: usize,
    /// Appends attempted, not acknowledged, and absent.
    pub unacknowledged_absent: usize,
}

/// Checks `contents` (a snapshot of `collection` covering every time the
/// ledger wrote) against `ledger`: every acknowledged append present
/// exactly once, every group whole, no row twice, nothing never attempted.
///
/// # Errors
///
/// A description of the first violations found.
pub fn verify(
    collection: u64,
    contents: &[(Row, Diff)],
    ledger: &Ledger,
) -> Result<Verdict, String> {
    let mut problems = Vec::new();
    // (run, seq) -> (parts, parts seen)
    let mut groups: BTreeMap<(i64, i64), (i64, BTreeSet<i64>)> = BTreeMap::new();
    // Consolidate first: the same row twice is a duplicate however listed.
    let mut consolidated: BTreeMap<&Row, Diff> = BTreeMap::new();
    for (row, diff) in contents {
        *consolidated.entry(row).or_insert(0) += diff;
    }
    for (row, diff) in consolidated {
        let datums = row.unpack();
        let [
            Datum::Int64(run),
            Datum::Int64(seq),
            Datum::Int64(part),
            Datum::Int64(parts),
        ] = datums.as_slice()
        else {
            problems.push(format!("a row not written by a writer: {datums:?}"));
            continue;
        };
        if diff != 1 {
            problems.push(format!(
                "duplicated or retracted: run={run} seq={seq} part={part} diff={diff}"
            ));
        }
        let group = groups
            .entry((*run, *seq))
            .or_insert((*parts, BTreeSet::new()));
        group.1.insert(*part);
    }
    for ((run, seq), (parts, seen)) in &groups {
        if seen.len() as i64 != *parts {
            problems.push(format!(
                "half present: run={run} seq={seq} rows_present={} rows={parts}",
                seen.len()
            ));
        }
    }
    let attempted: BTreeSet<_> = ledger
        .attempted
        .iter()
        .chain(&ledger.acknowledged)
        .filter(|append| append.collection == collection)
        .map(|append| (append.run, append.seq))
        .collect();
    for (run, seq) in groups.keys() {
        if !attempted.contains(&(*run, *seq)) {
            problems.push(format!("present but never attempted: run={run} seq={seq}"));
        }
    }
    let mut verdict = Verdict::default();
    for append in ledger
        .acknowledged
        .iter()
        .filter(|append| append.collection == collection)
    {
        if groups.contains_key(&(append.run, append.seq)) {
            verdict.acknowledged_present += 1;
        } else {
            problems.push(format!("acknowledged but lost: {append}"));
        }
    }
    let acknowledged: BTreeSet<_> = ledger.acknowledged.iter().map(Append::key).collect();
    for append in ledger
        .attempted
        .iter()
        .filter(|append| append.collection == collection && !acknowledged.contains(&append.key()))
    {
        if groups.contains_key(&(append.run, append.seq)) {
            verdict.unacknowledged_present += 1;
        } else {
            verdict.unacknowledged_absent += 1;
        }
    }
    if problems.is_empty() {
        Ok(verdict)
    } else {
        problems.truncate(10);
        Err(format!("collection {collection}: {}", problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(seq: i64, lower: u64) -> Append {
        Append {
            collection: 1,
            run: 0,
            seq,
            parts: 3,
            lower,
            upper: lower + 1,
        }
    }

    fn contents_of(appends: &[Append]) -> Vec<(Row, Diff)> {
        appends
            .iter()
            .flat_map(Append::updates)
            .map(|update| (update.row, update.diff))
            .collect()
    }

    fn ledger(attempted: &[Append], acknowledged: &[Append]) -> Ledger {
        let mut output = String::new();
        for append in attempted {
            output.push_str(&Ledger::attempt_line(append));
            output.push('\n');
        }
        for append in acknowledged {
            output.push_str(&Ledger::ack_line(append));
            output.push('\n');
        }
        // A line cut by a kill.
        output.push_str("ack collection=1 run=0 se");
        let mut ledger = Ledger::default();
        ledger.read_output(&output);
        ledger
    }

    #[test]
    fn whole_acknowledged_groups_pass() {
        let (a, b, c) = (append(0, 0), append(1, 1), append(2, 2));
        let verdict = verify(1, &contents_of(&[a, b]), &ledger(&[a, b, c], &[a])).unwrap();
        assert_eq!(
            verdict,
            Verdict {
                acknowledged_present: 1,
                unacknowledged_present: 1,
                unacknowledged_absent: 1,
            }
        );
    }

    #[test]
    fn a_lost_acknowledged_append_fails() {
        let (a, b) = (append(0, 0), append(1, 1));
        let err = verify(1, &contents_of(&[a]), &ledger(&[a, b], &[a, b])).unwrap_err();
        assert!(err.contains("acknowledged but lost"), "{err}");
    }

    #[test]
    fn a_duplicate_fails() {
        let a = append(0, 0);
        let err = verify(1, &contents_of(&[a, a]), &ledger(&[a], &[a])).unwrap_err();
        assert!(err.contains("duplicated"), "{err}");
    }

    #[test]
    fn a_half_group_fails() {
        let a = append(0, 0);
        let mut contents = contents_of(&[a]);
        contents.pop();
        let err = verify(1, &contents, &ledger(&[a], &[])).unwrap_err();
        assert!(err.contains("half present"), "{err}");
    }

    #[test]
    fn a_group_never_attempted_fails() {
        let a = append(0, 0);
        let err = verify(1, &contents_of(&[a]), &ledger(&[], &[])).unwrap_err();
        assert!(err.contains("never attempted"), "{err}");
    }
}
