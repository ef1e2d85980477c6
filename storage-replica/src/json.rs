//! The JSON form of rows and of the file sink's update lines.
//!
//! A row is a JSON array with one element per datum:
//!
//! | datum | JSON |
//! |---|---|
//! | `Null` | `null` |
//! | `Bool` | `true` / `false` |
//! | `Int64` | an integer (`7`) |
//! | `Float64`, finite | a number with a fraction or exponent (`7.0`, `1e300`) |
//! | `Float64`, NaN or infinite | `{"float64_bits": <the IEEE bits as an unsigned integer>}` |
//! | `String` | a string |
//! | `Bytes` | `{"bytes": "<lowercase hex>"}` |
//! | `Timestamp` | `{"timestamp": <microseconds since the epoch>}` |
//!
//! Every datum reads back bit for bit (floats are written in their
//! shortest exact form and parsed exactly). A time is written as the
//! unsigned number [`time_number`] gives: for `u64` times, the time
//! itself.

use serde::Serialize;
use serde_json::{Map, Number, Value};
use tidemark_storage_types::{Codec64, Datum, Diff, Row};

/// A time as the number the sink writes: its [`Codec64`] encoding with the
/// sign bit flipped, which orders like the time and is the time itself for
/// `u64`.
#[must_use]
pub(crate) fn time_number<T: Codec64>(time: &T) -> u64 {
    (time.encode() as u64) ^ (1 << 63)
}

/// The time [`time_number`] wrote, or `None` if no time encodes to it.
#[must_use]
pub(crate) fn number_time<T: Codec64>(number: u64) -> Option<T> {
    let encoded = (number ^ (1 << 63)) as i64;
    let time = T::decode(encoded);
    (time.encode() == encoded).then_some(time)
}

/// The JSON array of `row`'s datums.
#[must_use]
pub(crate) fn row_to_json(row: &Row) -> Value {
    Value::Array(row.iter().map(datum_to_json).collect())
}

fn tagged(tag: &str, value: Value) -> Value {
    let mut object = Map::new();
    object.insert(tag.to_owned(), value);
    Value::Object(object)
}

fn datum_to_json(datum: Datum<'_>) -> Value {
    match datum {
        Datum::Null => Value::Null,
        Datum::Bool(b) => Value::Bool(b),
        Datum::Int64(i) => Value::from(i),
        Datum::Float64(x) => match Number::from_f64(x) {
            Some(number) => Value::Number(number),
            None => tagged("float64_bits", Value::from(x.to_bits())),
        },
        Datum::String(s) => Value::String(s.to_owned()),
        Datum::Bytes(bytes) => {
            let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            tagged("bytes", Value::String(hex))
        }
        Datum::Timestamp(micros) => tagged("timestamp", Value::from(micros)),
    }
}

/// A datum read from JSON, owning its payload until the row is packed.
enum OwnedDatum {
    Null,
    Bool(bool),
    Int64(i64),
    Float64(f64),
    String(String),
    Bytes(Vec<u8>),
    Timestamp(i64),
}

impl OwnedDatum {
    fn as_datum(&self) -> Datum<'_> {
        match self {
            OwnedDatum::Null => Datum::Null,
            OwnedDatum::Bool(b) => Datum::Bool(*b),
            OwnedDatum::Int64(i) => Datum::Int64(*i),
            OwnedDatum::Float64(x) => Datum::Float64(*x),
            OwnedDatum::String(s) => Datum::String(s),
            OwnedDatum::Bytes(b) => Datum::Bytes(b),
            OwnedDatum::Timestamp(micros) => Datum::Timestamp(*micros),
        }
    }
}

/// The row a [`row_to_json`] array stands for.
///
/// # Errors
///
/// A message naming the position and what was wrong.
pub(crate) fn row_from_json(value: &Value) -> Result<Row, String> {
    let Value::Array(elements) = value else {
        return Err(format!("row is not a JSON array: {value}"));
    };
    let datums = elements
        .iter()
        .enumerate()
        .map(|(position, element)| {
            datum_from_json(element).map_err(|problem| format!("datum {position}: {problem}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Row::pack(datums.iter().map(OwnedDatum::as_datum)))
}

fn datum_from_json(value: &Value) -> Result<OwnedDatum, String> {
    Ok(match value {
        Value::Null => OwnedDatum::Null,
        Value::Bool(b) => OwnedDatum::Bool(*b),
        Value::Number(number) => {
            if let Some(i) = number.as_i64() {
                OwnedDatum::Int64(i)
            } else if number.is_f64() {
                OwnedDatum::Float64(number.as_f64().expect("an f64 number"))
            } else {
                return Err(format!("integer {number} is out of the int64 range"));
            }
        }
        Value::String(s) => OwnedDatum::String(s.clone()),
        Value::Object(object) => {
            let mut entries = object.iter();
            let (Some((tag, payload)), None) = (entries.next(), entries.next()) else {
                return Err(format!("expected an object with one tag, found {value}"));
            };
            match tag.as_str() {
                "float64_bits" => {
                    let bits = payload
                        .as_u64()
                        .ok_or_else(|| format!("float64_bits is not a u64: {payload}"))?;
                    OwnedDatum::Float64(f64::from_bits(bits))
                }
                "bytes" => {
                    let hex = payload
                        .as_str()
                        .ok_or_else(|| format!("bytes is not a string: {payload}"))?;
                    OwnedDatum::Bytes(decode_hex(hex)?)
                }
                "timestamp" => {
                    let micros = payload
                        .as_i64()
                        .ok_or_else(|| format!("timestamp is not an int64: {payload}"))?;
                    OwnedDatum::Timestamp(micros)
                }
                other => return Err(format!("unknown datum tag {other:?}")),
            }
        }
        Value::Array(_) => return Err(format!("a datum cannot be an array: {value}")),
    })
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err(format!("bytes has an odd number of hex digits: {hex:?}"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|at| {
            hex.get(at..at + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("bytes is not hex: {hex:?}"))
        })
        .collect()
}

/// One update as the sink's line (without the newline):
/// `{"row":[...],"time":T,"diff":D}`.
#[must_use]
pub(crate) fn encode_update<T: Codec64>(row: &Row, time: &T, diff: Diff) -> String {
    /// The line's fields, in the order they are written.
    #[derive(Serialize)]
    struct Line {
        row: Value,
        time: u64,
        diff: Diff,
    }
    serde_json::to_string(&Line {
        row: row_to_json(row),
        time: time_number(time),
        diff,
    })
    .expect("a JSON value serializes")
}

/// The update an [`encode_update`] line stands for.
///
/// # Errors
///
/// A message saying what was wrong with the line.
pub(crate) fn decode_update<T: Codec64>(line: &str) -> Result<(Row, T, Diff), String> {
    let value: Value = serde_json::from_str(line).map_err(|err| format!("not JSON: {err}"))?;
    let Value::Object(object) = &value else {
        return Err(format!("not a JSON object: {value}"));
    };
    if let Some(key) = object
        .keys()
        .find(|key| !matches!(key.as_str(), "row" | "time" | "diff"))
    {
        return Err(format!("unknown field {key:?}"));
    }
    let field = |name: &str| {
        object
            .get(name)
            .ok_or_else(|| format!("missing field {name:?}"))
    };
    let row = row_from_json(field("row")?)?;
    let time_value = field("time")?;
    let time = time_value
        .as_u64()
        .and_then(number_time)
        .ok_or_else(|| format!("time is not a time: {time_value}"))?;
    let diff_value = field("diff")?;
    let diff = diff_value
        .as_i64()
        .ok_or_else(|| format!("diff is not an int64: {diff_value}"))?;
    Ok((row, time, diff))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn round_trip(row: &Row) -> Row {
        let text = row_to_json(row).to_string();
        let value: Value = serde_json::from_str(&text).unwrap();
        row_from_json(&value).unwrap()
    }

    #[test]
    fn every_datum_kind_round_trips() {
        let quiet_nan_with_payload = f64::from_bits(0x7ff8_0000_0000_0001);
        let floats = [
            0.0,
            -0.0,
            1.0,
            -2.5,
            0.1,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::MIN,
            f64::NAN,
            -f64::NAN,
            quiet_nan_with_payload,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for x in floats {
            let row = Row::pack([Datum::Float64(x)]);
            assert_eq!(round_trip(&row), row, "{x:?} ({:#x})", x.to_bits());
        }
        let row = Row::pack([
            Datum::Null,
            Datum::Bool(true),
            Datum::Bool(false),
            Datum::Int64(i64::MIN),
            Datum::Int64(i64::MAX),
            Datum::Int64(0),
            Datum::String(""),
            Datum::String("héllo \"quoted\" \n\u{0}"),
            Datum::Bytes(&[]),
            Datum::Bytes(&[0, 1, 0xab, 0xff]),
            Datum::Timestamp(i64::MIN),
            Datum::Timestamp(1_700_000_000_000_000),
        ]);
        assert_eq!(round_trip(&row), row);
        assert_eq!(round_trip(&Row::default()), Row::default());
    }

    #[test]
    fn the_json_form_is_readable() {
        let row = Row::pack([
            Datum::Int64(7),
            Datum::Float64(7.0),
            Datum::String("seven"),
            Datum::Bytes(&[7, 255]),
            Datum::Timestamp(7),
            Datum::Float64(f64::INFINITY),
            Datum::Null,
            Datum::Bool(false),
        ]);
        assert_eq!(
            row_to_json(&row).to_string(),
            format!(
                r#"[7,7.0,"seven",{{"bytes":"07ff"}},{{"timestamp":7}},{{"float64_bits":{}}},null,false]"#,
                f64::INFINITY.to_bits()
            )
        );
        assert_eq!(
            encode_update(&Row::pack([Datum::Int64(1)]), &5u64, -1),
            r#"{"row":[1],"time":5,"diff":-1}"#
        );
    }

    #[test]
    fn bad_datums_say_what_is_wrong() {
        let cases = [
            (json!({"row": 1}), "row is not a JSON array"),
            (
                json!([1, 18446744073709551615u64]),
                "datum 1: integer 18446744073709551615 is out of the int64 range",
            ),
            (json!([[1]]), "datum 0: a datum cannot be an array"),
            (json!([{"bytes": "abc"}]), "odd number of hex digits"),
            (json!([{"bytes": "zz"}]), "bytes is not hex"),
            (json!([{"bytes": "é"}]), "bytes is not hex"),
            (json!([{"bytes": 1}]), "bytes is not a string"),
            (json!([{"float64_bits": -1}]), "float64_bits is not a u64"),
            (json!([{"timestamp": 1.5}]), "timestamp is not an int64"),
            (json!([{"date": 1}]), "unknown datum tag \"date\""),
            (
                json!([{"timestamp": 1, "bytes": ""}]),
                "expected an object with one tag",
            ),
        ];
        for (value, expected) in cases {
            let err = row_from_json(&value).unwrap_err();
            assert!(
                err.contains(expected),
                "{value}: {err} should say {expected}"
            );
        }
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases = [
            ("not json", "not JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"row":[],"time":1}"#, "missing field \"diff\""),
            (r#"{"row":[],"time":-1,"diff":1}"#, "time is not a time: -1"),
            (r#"{"row":[],"time":1,"diff":1.5}"#, "diff is not an int64"),
            (
                r#"{"row":[],"time":1,"diff":1,"extra":0}"#,
                "unknown field \"extra\"",
            ),
        ];
        for (line, expected) in cases {
            let err = decode_update::<u64>(line).unwrap_err();
            assert!(
                err.contains(expected),
                "{line}: {err} should say {expected}"
            );
        }
    }

    proptest! {
        #[test]
        fn u64_times_are_their_own_number(time in any::<u64>()) {
            prop_assert_eq!(time_number(&time), time);
            prop_assert_eq!(number_time::<u64>(time), Some(time));
        }

        #[test]
        fn any_float_round_trips(bits in any::<u64>(), i in any::<i64>()) {
            let row = Row::pack([Datum::Float64(f64::from_bits(bits)), Datum::Int64(i)]);
            prop_assert_eq!(round_trip(&row), row);
        }
    }
}
