//! Rows: an immutable packed encoding of [`Datum`]s, and the
//! [`RelationDesc`] that says which rows a collection accepts.
//!
//! A [`Row`] is a byte string: each datum is a one-byte tag followed by its
//! payload (fixed 8 bytes for numbers and timestamps, a 4-byte little-endian
//! length and the bytes for strings and byte strings). Cloning a row is a
//! reference-count increment. Rows order by their encoding, which is a total
//! order consistent with equality (it is what consolidation needs, not a
//! SQL order).

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::errors::{RowDecodeError, RowTooLarge, RowValidationError};

const TAG_NULL: u8 = 0;
const TAG_FALSE: u8 = 1;
const TAG_TRUE: u8 = 2;
const TAG_INT64: u8 = 3;
const TAG_FLOAT64: u8 = 4;
const TAG_STRING: u8 = 5;
const TAG_BYTES: u8 = 6;
const TAG_TIMESTAMP: u8 = 7;

/// One value of a row, borrowed from the row (or from the caller when
/// packing).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Datum<'a> {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit signed integer.
    Int64(i64),
    /// A 64-bit float (compared bitwise inside rows).
    Float64(f64),
    /// A UTF-8 string.
    String(&'a str),
    /// A byte string.
    Bytes(&'a [u8]),
    /// A timestamp in microseconds since the Unix epoch.
    Timestamp(i64),
}

impl Datum<'_> {
    /// The scalar type of this datum, or `None` for [`Datum::Null`].
    #[must_use]
    pub fn scalar_type(&self) -> Option<ScalarType> {
        match self {
            Datum::Null => None,
            Datum::Bool(_) => Some(ScalarType::Bool),
            Datum::Int64(_) => Some(ScalarType::Int64),
            Datum::Float64(_) => Some(ScalarType::Float64),
            Datum::String(_) => Some(ScalarType::String),
            Datum::Bytes(_) => Some(ScalarType::Bytes),
            Datum::Timestamp(_) => Some(ScalarType::Timestamp),
        }
    }
}

impl fmt::Display for Datum<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Datum::Null => write!(f, "null"),
            Datum::Bool(b) => write!(f, "{b}"),
            Datum::Int64(i) => write!(f, "{i}"),
            Datum::Float64(x) => write!(f, "{x}"),
            Datum::String(s) => write!(f, "{s:?}"),
            Datum::Bytes(b) => {
                write!(f, "0x")?;
                b.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
            }
            Datum::Timestamp(micros) => write!(f, "ts{micros}"),
        }
    }
}

/// An immutable, cheaply cloned, packed sequence of datums.
///
/// ```
/// use tidemark_storage_types::{Datum, Row};
/// let row = Row::pack([Datum::Int64(7), Datum::String("seven"), Datum::Null]);
/// assert_eq!(row.unpack(), vec![Datum::Int64(7), Datum::String("seven"), Datum::Null]);
/// assert_eq!(Row::from_bytes(row.as_bytes()).unwrap(), row);
/// assert_eq!(row.to_string(), "(7, \"seven\", null)");
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Row {
    data: Bytes,
}

impl Row {
    /// The largest row encoding, in bytes (4 GiB - 1): a batch stores each
    /// row's length in 32 bits. Every [`Row`] is at most this long.
    pub const MAX_BYTES: usize = u32::MAX as usize;

    /// Packs datums into a row.
    ///
    /// # Panics
    ///
    /// If the encoding would exceed [`Row::MAX_BYTES`]; use
    /// [`Row::try_pack`] for datums whose size the caller does not control.
    pub fn pack<'a, I>(datums: I) -> Row
    where
        I: IntoIterator<Item = Datum<'a>>,
    {
        match Row::try_pack(datums) {
            Ok(row) => row,
            Err(too_large) => panic!("{too_large}"),
        }
    }

    /// Packs datums into a row, refusing one whose encoding would exceed
    /// [`Row::MAX_BYTES`].
    ///
    /// ```
    /// use tidemark_storage_types::{Datum, Row};
    /// let row = Row::try_pack([Datum::Int64(1), Datum::String("a")]).unwrap();
    /// assert_eq!(row, Row::pack([Datum::Int64(1), Datum::String("a")]));
    /// ```
    ///
    /// # Errors
    ///
    /// [`RowTooLarge`] naming the size reached and the limit.
    pub fn try_pack<'a, I>(datums: I) -> Result<Row, RowTooLarge>
    where
        I: IntoIterator<Item = Datum<'a>>,
    {
        try_pack_within(datums, Row::MAX_BYTES)
    }

    /// The row's encoding, as stored by backends.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// Reads a row back from its encoding, checking that it is well formed.
    ///
    /// # Errors
    ///
    /// [`RowDecodeError`] naming the offset and what was wrong when the bytes
    /// are not a valid row encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Row, RowDecodeError> {
        validate_encoding(bytes)?;
        Ok(Row {
            data: Bytes::copy_from_slice(bytes),
        })
    }

    /// Reads a row back from its encoding without copying it: the row shares
    /// `bytes` (typically a slice of a larger buffer, such as a decoded
    /// batch), and keeps that whole buffer alive while it lives.
    ///
    /// # Errors
    ///
    /// [`RowDecodeError`] as for [`Row::from_bytes`].
    pub fn from_shared(bytes: Bytes) -> Result<Row, RowDecodeError> {
        validate_encoding(&bytes)?;
        Ok(Row { data: bytes })
    }

    /// Iterates over the datums of the row.
    #[must_use]
    pub fn iter(&self) -> DatumIter<'_> {
        DatumIter {
            data: &self.data,
            offset: 0,
        }
    }

    /// The datums of the row, collected.
    #[must_use]
    pub fn unpack(&self) -> Vec<Datum<'_>> {
        self.iter().collect()
    }

    /// The number of datums in the row.
    #[must_use]
    pub fn arity(&self) -> usize {
        self.iter().count()
    }

    /// The size of the encoding in bytes.
    #[must_use]
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }
}

fn validate_encoding(bytes: &[u8]) -> Result<(), RowDecodeError> {
    validate_encoding_within(bytes, Row::MAX_BYTES)
}

fn validate_encoding_within(bytes: &[u8], limit: usize) -> Result<(), RowDecodeError> {
    if bytes.len() > limit {
        return Err(RowDecodeError {
            offset: limit,
            problem: "row longer than Row::MAX_BYTES (4 GiB - 1)",
        });
    }
    let mut iter = DatumIter {
        data: bytes,
        offset: 0,
    };
    while iter.next_checked()?.is_some() {}
    Ok(())
}

fn push_datum(data: &mut Vec<u8>, datum: Datum<'_>) {
    match datum {
        Datum::Null => data.push(TAG_NULL),
        Datum::Bool(false) => data.push(TAG_FALSE),
        Datum::Bool(true) => data.push(TAG_TRUE),
        Datum::Int64(i) => {
            data.push(TAG_INT64);
            data.extend_from_slice(&i.to_le_bytes());
        }
        Datum::Float64(x) => {
            data.push(TAG_FLOAT64);
            data.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        Datum::String(s) => push_variable(data, TAG_STRING, s.as_bytes()),
        Datum::Bytes(b) => push_variable(data, TAG_BYTES, b),
        Datum::Timestamp(micros) => {
            data.push(TAG_TIMESTAMP);
            data.extend_from_slice(&micros.to_le_bytes());
        }
    }
}

/// Packs `datums`, refusing before it would grow past `limit` bytes (at
/// most [`Row::MAX_BYTES`], so every datum length fits in 32 bits).
fn try_pack_within<'a, I>(datums: I, limit: usize) -> Result<Row, RowTooLarge>
where
    I: IntoIterator<Item = Datum<'a>>,
{
    let mut data = Vec::new();
    for datum in datums {
        let needed = data.len().saturating_add(encoded_len(datum));
        if needed > limit {
            return Err(RowTooLarge {
                bytes: needed,
                limit,
            });
        }
        push_datum(&mut data, datum);
    }
    Ok(Row {
        data: Bytes::from(data),
    })
}

/// How many bytes `datum` takes in a row encoding.
fn encoded_len(datum: Datum<'_>) -> usize {
    match datum {
        Datum::String(s) => 5usize.saturating_add(s.len()),
        Datum::Bytes(b) => 5usize.saturating_add(b.len()),
        other => {
            let mut scratch = Vec::with_capacity(16);
            push_datum(&mut scratch, other);
            scratch.len()
        }
    }
}

fn push_variable(data: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    // SUBTLE: callers go through `try_pack_within`, which bounds the whole
    // row, hence every payload, by `Row::MAX_BYTES` = `u32::MAX`.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    data.push(tag);
    data.extend_from_slice(&len.to_le_bytes());
    data.extend_from_slice(payload);
}

/// Iterator over the datums of a [`Row`].
#[derive(Clone, Debug)]
pub struct DatumIter<'a> {
    data: &'a [u8],
    offset: usize,
}

impl<'a> DatumIter<'a> {
    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], RowDecodeError> {
        let end = self
            .offset
            .checked_add(len)
            .filter(|end| *end <= self.data.len());
        let end = end.ok_or(RowDecodeError {
            offset: self.offset,
            problem: what,
        })?;
        let slice = &self.data[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn take_8(&mut self, what: &'static str) -> Result<[u8; 8], RowDecodeError> {
        let slice = self.take(8, what)?;
        Ok(slice.try_into().expect("took exactly 8 bytes"))
    }

    fn next_checked(&mut self) -> Result<Option<Datum<'a>>, RowDecodeError> {
        if self.offset >= self.data.len() {
            return Ok(None);
        }
        let tag_offset = self.offset;
        let tag = self.take(1, "missing tag")?[0];
        let datum = match tag {
            TAG_NULL => Datum::Null,
            TAG_FALSE => Datum::Bool(false),
            TAG_TRUE => Datum::Bool(true),
            TAG_INT64 => Datum::Int64(i64::from_le_bytes(self.take_8("truncated int64")?)),
            TAG_FLOAT64 => Datum::Float64(f64::from_bits(u64::from_le_bytes(
                self.take_8("truncated float64")?,
            ))),
            TAG_TIMESTAMP => {
                Datum::Timestamp(i64::from_le_bytes(self.take_8("truncated timestamp")?))
            }
            TAG_STRING | TAG_BYTES => {
                let len_bytes = self.take(4, "truncated length")?;
                let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
                let payload = self.take(len, "truncated payload")?;
                if tag == TAG_STRING {
                    let s = std::str::from_utf8(payload).map_err(|_| RowDecodeError {
                        offset: tag_offset,
                        problem: "string is not utf-8",
                    })?;
                    Datum::String(s)
                } else {
                    Datum::Bytes(payload)
                }
            }
            _ => {
                return Err(RowDecodeError {
                    offset: tag_offset,
                    problem: "unknown datum tag",
                });
            }
        };
        Ok(Some(datum))
    }
}

impl<'a> Iterator for DatumIter<'a> {
    type Item = Datum<'a>;

    fn next(&mut self) -> Option<Datum<'a>> {
        // Rows are validated when built or decoded, so this cannot fail.
        self.next_checked()
            .expect("row encoding validated on construction")
    }
}

impl<'a> IntoIterator for &'a Row {
    type Item = Datum<'a>;
    type IntoIter = DatumIter<'a>;

    fn into_iter(self) -> DatumIter<'a> {
        self.iter()
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Row{self}")
    }
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(")?;
        for (i, datum) in self.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{datum}")?;
        }
        write!(f, ")")
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.data)
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Row, D::Error> {
        let bytes: Vec<u8> = serde::de::Deserialize::deserialize(deserializer)?;
        Row::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// The type of a column, without nullability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScalarType {
    /// [`Datum::Bool`].
    Bool,
    /// [`Datum::Int64`].
    Int64,
    /// [`Datum::Float64`].
    Float64,
    /// [`Datum::String`].
    String,
    /// [`Datum::Bytes`].
    Bytes,
    /// [`Datum::Timestamp`].
    Timestamp,
}

impl fmt::Display for ScalarType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ScalarType::Bool => "bool",
            ScalarType::Int64 => "int64",
            ScalarType::Float64 => "float64",
            ScalarType::String => "string",
            ScalarType::Bytes => "bytes",
            ScalarType::Timestamp => "timestamp",
        };
        f.write_str(name)
    }
}

/// The type of a column: a scalar type and whether NULL is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ColumnType {
    /// The type of the column's non-null values.
    pub scalar_type: ScalarType,
    /// Whether the column accepts [`Datum::Null`].
    pub nullable: bool,
}

impl ScalarType {
    /// This type as a column that accepts NULL or not.
    #[must_use]
    pub fn nullable(self, nullable: bool) -> ColumnType {
        ColumnType {
            scalar_type: self,
            nullable,
        }
    }
}

/// The shape of a collection's rows: column names and types.
///
/// ```
/// use tidemark_storage_types::{Datum, RelationDesc, Row, ScalarType};
/// let desc = RelationDesc::empty()
///     .with_column("id", ScalarType::Int64.nullable(false))
///     .with_column("name", ScalarType::String.nullable(true));
/// assert!(desc.validate(&Row::pack([Datum::Int64(1), Datum::Null])).is_ok());
/// let err = desc.validate(&Row::pack([Datum::Null, Datum::Null])).unwrap_err();
/// assert_eq!(err.to_string(), "column \"id\" is not nullable but the row has null at position 0");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RelationDesc {
    columns: Vec<(String, ColumnType)>,
}

impl RelationDesc {
    /// A relation with no columns.
    #[must_use]
    pub fn empty() -> Self {
        RelationDesc::default()
    }

    /// This relation with one more column at the end.
    #[must_use]
    pub fn with_column(mut self, name: impl Into<String>, column_type: ColumnType) -> Self {
        self.columns.push((name.into(), column_type));
        self
    }

    /// The columns, in order.
    pub fn columns(&self) -> impl Iterator<Item = (&str, &ColumnType)> {
        self.columns.iter().map(|(name, ty)| (name.as_str(), ty))
    }

    /// The number of columns.
    #[must_use]
    pub fn arity(&self) -> usize {
        self.columns.len()
    }

    /// Checks that `row` has one datum per column, of the column's type, and
    /// null only where the column is nullable.
    ///
    /// # Errors
    ///
    /// [`RowValidationError`] naming the column (or the arity) that does not
    /// match.
    pub fn validate(&self, row: &Row) -> Result<(), RowValidationError> {
        let mut datums = row.iter();
        for (position, (name, column_type)) in self.columns.iter().enumerate() {
            let Some(datum) = datums.next() else {
                return Err(RowValidationError::Arity {
                    expected: self.columns.len(),
                    found: row.arity(),
                });
            };
            match datum.scalar_type() {
                None if !column_type.nullable => {
                    return Err(RowValidationError::NullInNonNullable {
                        column: name.clone(),
                        position,
                    });
                }
                Some(found) if found != column_type.scalar_type => {
                    return Err(RowValidationError::TypeMismatch {
                        column: name.clone(),
                        position,
                        expected: column_type.scalar_type,
                        found,
                    });
                }
                _ => {}
            }
        }
        if datums.next().is_some() {
            return Err(RowValidationError::Arity {
                expected: self.columns.len(),
                found: row.arity(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_row_past_the_limit_is_refused_naming_it() {
        let err = try_pack_within([Datum::Int64(1), Datum::String("abcdef")], 12).unwrap_err();
        assert_eq!(
            err,
            RowTooLarge {
                bytes: 20,
                limit: 12
            }
        );
        assert!(err.to_string().contains("Row::MAX_BYTES"), "{err}");
        let fits = try_pack_within([Datum::Int64(1), Datum::String("abc")], 17).unwrap();
        assert_eq!(fits.as_bytes().len(), 17);
        assert_eq!(fits, Row::pack([Datum::Int64(1), Datum::String("abc")]));
        assert_eq!(Row::MAX_BYTES, u32::MAX as usize);
    }

    #[test]
    fn decoding_a_row_past_the_limit_is_refused_naming_it() {
        let row = Row::pack([Datum::Int64(1), Datum::String("abcdef")]);
        let err = validate_encoding_within(row.as_bytes(), 12).unwrap_err();
        assert_eq!(err.offset, 12);
        assert!(err.to_string().contains("Row::MAX_BYTES"), "{err}");
        assert!(validate_encoding_within(row.as_bytes(), 20).is_ok());
    }

    fn every_datum_type() -> Row {
        Row::pack([
            Datum::Null,
            Datum::Bool(true),
            Datum::Bool(false),
            Datum::Int64(i64::MIN),
            Datum::Float64(-0.5),
            Datum::String("héllo"),
            Datum::Bytes(&[0, 255, 7]),
            Datum::Timestamp(1_700_000_000_000_000),
        ])
    }

    #[test]
    fn every_datum_round_trips() {
        let row = every_datum_type();
        assert_eq!(row.arity(), 8);
        assert_eq!(Row::from_bytes(row.as_bytes()).unwrap(), row);
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(serde_json::from_str::<Row>(&json).unwrap(), row);
    }

    #[test]
    fn bad_encodings_are_errors() {
        assert_eq!(
            Row::from_bytes(&[99]).unwrap_err().problem,
            "unknown datum tag"
        );
        assert_eq!(
            Row::from_bytes(&[TAG_INT64, 1]).unwrap_err().problem,
            "truncated int64"
        );
        assert_eq!(
            Row::from_bytes(&[TAG_STRING, 2, 0, 0, 0, 0xff, 0xfe])
                .unwrap_err()
                .problem,
            "string is not utf-8"
        );
        assert_eq!(
            Row::from_bytes(&[TAG_BYTES, 9, 0, 0, 0, 1])
                .unwrap_err()
                .problem,
            "truncated payload"
        );
        assert!(serde_json::from_str::<Row>("[99]").is_err());
    }

    #[test]
    fn validation_names_the_column() {
        let desc = RelationDesc::empty()
            .with_column("a", ScalarType::Int64.nullable(false))
            .with_column("b", ScalarType::String.nullable(true));
        let err = desc
            .validate(&Row::pack([Datum::Int64(1), Datum::Int64(2)]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "column \"b\" expects string but the row has int64 at position 1"
        );
        let err = desc.validate(&Row::pack([Datum::Int64(1)])).unwrap_err();
        assert_eq!(err.to_string(), "row has 1 columns but the relation has 2");
        let long = Row::pack([Datum::Int64(1), Datum::Null, Datum::Null]);
        assert!(matches!(
            desc.validate(&long),
            Err(RowValidationError::Arity { found: 3, .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(row) = Row::from_bytes(&bytes) {
                prop_assert_eq!(row.as_bytes(), &bytes[..]);
                let _ = row.unpack();
            }
        }

        #[test]
        fn packing_round_trips(ints in proptest::collection::vec(any::<i64>(), 0..8), s in ".*") {
            let mut datums: Vec<Datum<'_>> = ints.iter().map(|i| Datum::Int64(*i)).collect();
            datums.push(Datum::String(&s));
            let row = Row::pack(datums.clone());
            prop_assert_eq!(row.unpack(), datums);
        }
    }
}
