//! Deserializing frontiers from bytes a peer sent, without trusting the
//! length a frame declares.
//!
//! `Antichain`'s own `Deserialize` reserves room for as many elements as the
//! input declares before reading any of them, so a few bytes of a hostile
//! or corrupted frame that declare 2^32 elements make the reader reserve
//! 32 GiB. These functions read the same format (a struct with one field,
//! `elements`, a sequence of times) into a `Vec`, whose reservation serde
//! bounds, and build the antichain from it. Use them with
//! `#[serde(deserialize_with = "...")]` on every frontier of a type that is
//! read from the network or from storage.
//!
//! ```
//! use timely::progress::Antichain;
//! use tidemark_storage_types::frontier_serde;
//!
//! let json = r#"{"elements":[3]}"#;
//! let frontier: Antichain<u64> =
//!     frontier_serde::deserialize(&mut serde_json::Deserializer::from_str(json)).unwrap();
//! assert_eq!(frontier, Antichain::from_elem(3));
//! ```

use serde::{Deserialize, Deserializer};
use timely::PartialOrder;
use timely::progress::Antichain;

/// `Antichain`'s serialized form, read into a `Vec`.
#[derive(Deserialize)]
#[serde(rename = "Antichain")]
struct WireAntichain<T> {
    elements: Vec<T>,
}

/// A frontier, as `Antichain`'s `Deserialize` reads it, reserving no more
/// than the input holds.
///
/// # Errors
///
/// The deserializer's error for input that is not a frontier.
pub fn deserialize<'de, D, T>(deserializer: D) -> Result<Antichain<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + PartialOrder,
{
    let wire = WireAntichain::<T>::deserialize(deserializer)?;
    Ok(Antichain::from(wire.elements))
}

/// An optional frontier, as [`deserialize`] reads one.
///
/// # Errors
///
/// As [`deserialize`].
pub fn deserialize_option<'de, D, T>(deserializer: D) -> Result<Option<Antichain<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + PartialOrder,
{
    let wire = Option::<WireAntichain<T>>::deserialize(deserializer)?;
    Ok(wire.map(|wire| Antichain::from(wire.elements)))
}

/// `(key, frontier)` pairs, each frontier as [`deserialize`] reads it.
///
/// # Errors
///
/// As [`deserialize`].
pub fn deserialize_pairs<'de, D, K, T>(deserializer: D) -> Result<Vec<(K, Antichain<T>)>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de>,
    T: Deserialize<'de> + PartialOrder,
{
    let wire = Vec::<(K, WireAntichain<T>)>::deserialize(deserializer)?;
    Ok(wire
        .into_iter()
        .map(|(key, wire)| (key, Antichain::from(wire.elements)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_antichain_writes() {
        let frontier = Antichain::from(vec![(1u64, 5u64), (4, 2)]);
        let json = serde_json::to_string(&frontier).unwrap();
        let read: Antichain<(u64, u64)> =
            deserialize(&mut serde_json::Deserializer::from_str(&json)).unwrap();
        assert_eq!(read, frontier);
        let pairs = vec![(7u32, Antichain::from_elem(3u64)), (8, Antichain::new())];
        let json = serde_json::to_string(&pairs).unwrap();
        let read: Vec<(u32, Antichain<u64>)> =
            deserialize_pairs(&mut serde_json::Deserializer::from_str(&json)).unwrap();
        assert_eq!(read, pairs);
        let some = Some(Antichain::from_elem(9u64));
        let json = serde_json::to_string(&some).unwrap();
        let read = deserialize_option(&mut serde_json::Deserializer::from_str(&json)).unwrap();
        assert_eq!(read, some);
    }

    #[test]
    fn a_declared_length_beyond_the_input_is_an_error_not_a_reservation() {
        // A bincode-style input: a length of 2^60, then one element. Reserving
        // what it declares is a capacity overflow, so only a reader that does
        // not trust the length gets as far as the end of the input.
        struct Declared;
        impl<'de> Deserializer<'de> for Declared {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: serde::de::Visitor<'de>>(
                self,
                visitor: V,
            ) -> Result<V::Value, Self::Error> {
                visitor.visit_seq(Elements(1))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map struct enum identifier ignored_any
            }
        }
        /// A sequence that declares 2^60 elements and holds `.0` of them.
        struct Elements(usize);
        impl<'de> serde::de::SeqAccess<'de> for Elements {
            type Error = serde::de::value::Error;
            fn next_element_seed<S: serde::de::DeserializeSeed<'de>>(
                &mut self,
                seed: S,
            ) -> Result<Option<S::Value>, Self::Error> {
                if self.0 == 0 {
                    return Err(serde::de::Error::custom("unexpected end of input"));
                }
                self.0 -= 1;
                seed.deserialize(serde::de::value::U64Deserializer::new(3))
                    .map(Some)
            }
            fn size_hint(&self) -> Option<usize> {
                Some(1 << 60)
            }
        }
        // The struct's one field is the declared sequence.
        struct Frontier;
        impl<'de> Deserializer<'de> for Frontier {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: serde::de::Visitor<'de>>(
                self,
                visitor: V,
            ) -> Result<V::Value, Self::Error> {
                struct Fields(bool);
                impl<'de> serde::de::SeqAccess<'de> for Fields {
                    type Error = serde::de::value::Error;
                    fn next_element_seed<S: serde::de::DeserializeSeed<'de>>(
                        &mut self,
                        seed: S,
                    ) -> Result<Option<S::Value>, Self::Error> {
                        if self.0 {
                            return Ok(None);
                        }
                        self.0 = true;
                        seed.deserialize(Declared).map(Some)
                    }
                }
                visitor.visit_seq(Fields(false))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map struct enum identifier ignored_any
            }
        }
        let err = deserialize::<_, u64>(Frontier).expect_err("the input ends early");
        assert!(err.to_string().contains("unexpected end"), "{err}");
        // Antichain's own Deserialize reserves first and fails there.
        let trusting = Antichain::<u64>::deserialize(Frontier).expect_err("no room for 2^60");
        assert!(
            !trusting.to_string().contains("unexpected end"),
            "{trusting}"
        );
    }
}
